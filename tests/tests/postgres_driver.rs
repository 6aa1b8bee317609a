//! The PostgreSQL driver against a real server (a fresh cluster per test): backends
//! terminated while idle never reach the application, nor do backends terminated
//! mid-query whose connection went straight back to the pool, a crash is counted with
//! its causes and refused while the server is down, "too many connections" is
//! reported as a refusal with its message, query errors leave the connection in the
//! pool, a database that does not exist fails at once for good, a query abandoned
//! mid-flight never hands its reply to the next user, and a deadpool-postgres manager
//! wrapped by steadypool gets the same replacement of dead connections. Without root or the PostgreSQL programs these
//! tests say SKIPPED.

use std::time::Duration;

use deadpool_postgres::{ManagerConfig, RecyclingMethod};
use steadypool::TcpState;
use steadypool::drivers::deadpool::DeadpoolManager;
use steadypool::drivers::postgres::{PgError, PgManager};
use steadypool::{
    AttemptError, Broken, CircuitState, Classify, Disposition, Error, Eviction, GiveUp, Manager,
    Phase, Pool, ResetCause, RetryPolicy, RunError, Sent,
};
use steadypool_tests::faults;
use steadypool_tests::postgres::{Hogs, PgServer};
use steadypool_tests::recorded::Books;
use steadypool_tests::{eventually, sockets};
use tokio_postgres::NoTls;

const TICK: Duration = Duration::from_millis(200);
/// Generous room for timing on a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(15);

fn pool_for(server: &PgServer, name: &str) -> Pool<PgManager> {
    Pool::builder(PgManager::new(server.config()).unwrap())
        .name(name)
        .reaper_interval(TICK)
        .learn_idle_limit(false)
        .build()
        .unwrap()
}

/// The server process id behind a pooled connection.
async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// Opens `n` connections at once, returns their backend pids; they go back idle.
async fn open_idle(pool: &Pool<PgManager>, n: usize) -> Vec<i32> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(pool.get().await.unwrap());
    }
    let mut pids = Vec::new();
    for conn in &held {
        pids.push(backend_pid(conn).await);
    }
    pids
}

/// Waits until backend `pid` runs a `pg_sleep`.
async fn wait_for_sleep(admin: &tokio_postgres::Client, pid: i32) {
    let deadline = tokio::time::Instant::now() + SLACK;
    loop {
        let row = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND query LIKE '%pg_sleep%'",
                &[&pid],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) == 1 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the query never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the server still lists backend `pid`.
async fn backend_alive(admin: &tokio_postgres::Client, pid: i32) -> bool {
    let row = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .unwrap();
    row.get::<_, i64>(0) > 0
}

/// None of this process's sockets to the server is left half-closed.
async fn no_close_wait(port: u16) -> bool {
    eventually(SLACK, || {
        sockets::count_in_state(port, TcpState::CloseWait).unwrap() == 0
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_terminated_while_idle_never_reach_the_application() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let pool = pool_for(&server, "terminate-idle");
    let pids = open_idle(&pool, 3).await;

    let admin = server.connect().await;
    for pid in &pids {
        let row = admin
            .query_one("SELECT pg_terminate_backend($1)", &[pid])
            .await
            .unwrap();
        assert!(row.get::<_, bool>(0), "backend {pid} was not terminated");
    }
    assert!(
        eventually(SLACK, || pool.status().size == 0).await,
        "terminated connections stayed in the pool: {:?}",
        pool.status()
    );
    let stats = pool.stats();
    assert_eq!(
        stats.resets(ResetCause::PeerClosed, Phase::Idle),
        3,
        "{stats:?}"
    );
    assert!(no_close_wait(server.port()).await);

    let conn = pool.get().await.unwrap();
    let pid = backend_pid(&conn).await;
    assert!(!pids.contains(&pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_terminated_mid_query_is_broken_with_its_cause() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let pool = pool_for(&server, "terminate-busy");
    let conn = pool.get().await.unwrap();
    let pid = backend_pid(&conn).await;

    let busy = tokio::spawn(async move {
        let result = conn.batch_execute("SELECT pg_sleep(60)").await;
        (conn, result)
    });
    let admin = server.connect().await;
    wait_for_sleep(&admin, pid).await;
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();

    let (mut conn, result) = busy.await.unwrap();
    let err = result.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57P01"), "{err:?}");
    let disposition = err.classify();
    assert_eq!(
        disposition,
        Disposition::Broken {
            cause: ResetCause::PeerClosed,
            sent: Sent::Maybe
        }
    );
    conn.mark_broken(ResetCause::PeerClosed);
    drop(conn);
    assert_eq!(pool.stats().resets(ResetCause::PeerClosed, Phase::InUse), 1);
    assert!(no_close_wait(server.port()).await);
    let fresh = pool.get().await.unwrap();
    assert_ne!(backend_pid(&fresh).await, pid);
}

/// A terminated backend sends its FATAL error, then exits: its socket closes a
/// moment later. An application that gets the error and drops the connection at once
/// hands it back inside that moment, when neither the socket nor the client shows it
/// closed yet. The next checkout must still never get it: the driver saw the FATAL
/// error go by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_mid_query_is_not_handed_out_again_even_at_once() {
    const RUNS: usize = 20;
    let Some(server) = PgServer::start() else {
        return;
    };
    let pool = Pool::builder(PgManager::new(server.config()).unwrap())
        .name("killed-then-reused")
        // The next checkout has that connection or a new one: nothing else to pick.
        .max_size(1)
        // Only the checkout may find the dead connection, not a reaper tick.
        .reaper_interval(Duration::from_secs(3600))
        .learn_idle_limit(false)
        .build()
        .unwrap();
    let admin = server.connect().await;
    let mut failures = Vec::new();
    for run in 0..RUNS {
        let conn = pool.get().await.unwrap();
        let pid = backend_pid(&conn).await;
        let app = {
            let pool = pool.clone();
            tokio::spawn(async move {
                let killed = conn.batch_execute("SELECT pg_sleep(5)").await;
                // What an application does with an error it does not inspect: the
                // connection goes back, and the next request takes one at once.
                drop(conn);
                let next = pool.get().await.unwrap();
                let answer = next.query_one("SELECT pg_backend_pid()", &[]).await;
                (killed, answer.map(|row| row.get::<_, i32>(0)))
            })
        };
        wait_for_sleep(&admin, pid).await;
        admin
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap();
        let (killed, answer) = app.await.unwrap();
        let killed = killed.unwrap_err();
        assert_eq!(killed.code().map(|c| c.code()), Some("57P01"), "{killed}");
        match answer {
            Ok(next) if next != pid => {}
            Ok(_) => failures.push(format!("run {run}: the killed backend answered")),
            Err(err) => failures.push(format!("run {run}: {err}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {RUNS} runs handed the dead connection out again: {failures:#?}; resets {:?}",
        failures.len(),
        pool.stats().reset_table()
    );
    let counted = pool.stats().resets(ResetCause::PeerClosed, Phase::Checkout)
        + pool.stats().resets(ResetCause::PeerClosed, Phase::InUse);
    assert_eq!(counted, RUNS as u64, "{:?}", pool.stats().reset_table());
    assert_eq!(
        pool.stats().all_resets(),
        RUNS as u64,
        "{:?}",
        pool.stats().reset_table()
    );
}

/// What the driver says about a terminated session: the cause and the server's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_names_the_sqlstate_and_the_servers_message() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let manager = PgManager::new(server.config()).unwrap();
    let pool = pool_for(&server, "broken-detail");
    let conn = pool.get().await.unwrap();
    let pid = backend_pid(&conn).await;
    let conn = conn.detach();
    assert_eq!(manager.broken(&conn), None);

    let admin = server.connect().await;
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + SLACK;
    let broken = loop {
        if let Some(broken) = manager.broken(&conn) {
            break broken;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the terminated session never showed as broken"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        broken,
        Broken::new(ResetCause::PeerClosed)
            .with_detail("57P01: terminating connection due to administrator command")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_is_counted_refused_while_down_and_recovered_after_restart() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let pool = pool_for(&server, "crash");
    open_idle(&pool, 3).await;

    server.stop_immediate();
    faults::assert_emptied_by_the_peer(&pool, 3).await;
    assert!(no_close_wait(server.port()).await);

    faults::assert_refused(pool.get().await);
    assert!(pool.stats().resets(ResetCause::Refused, Phase::Connect) >= 1);

    server.restart();
    let conn = pool.get().await.unwrap();
    let one: i32 = conn.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

/// `SELECT 1` through `run_idempotent`.
async fn select_one(pool: &Pool<PgManager>) -> Result<(), RunError<PgError>> {
    pool.run_idempotent(async |conn| {
        conn.simple_query("SELECT 1").await?;
        Ok(())
    })
    .await
}

/// A run whose connect the server refuses for good: it must come back after one
/// attempt, not retried, with the driver's error, which says it is permanent.
async fn refused_for_good(pool: &Pool<PgManager>) -> PgError {
    match select_one(pool).await {
        Err(RunError::NotExecuted {
            reason: GiveUp::Permanent,
            attempts: 1,
            source: Some(AttemptError::Checkout(Error::Connect { source, .. })),
            ..
        }) => {
            assert!(source.is_permanent(), "{source}");
            source
        }
        other => panic!("not retried, with the driver's error: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_fail_at_once_and_the_circuit_still_spares_the_server() {
    let Some(server) = PgServer::start() else {
        return;
    };
    // The test clusters trust every local login, but not a role that does not exist:
    // SQLSTATE 28000, the class of a wrong password too.
    let mut config = server.config();
    config.user("nobody");
    let patience = Duration::from_secs(30);
    let pool = Pool::builder(PgManager::new(config).unwrap())
        .wait_timeout(patience)
        .circuit_wait(patience)
        // Long open periods: the checkouts below all meet the open circuit, none a trial.
        .circuit_first_open(Duration::from_secs(20))
        .circuit_open_for(Duration::from_secs(20))
        .retry_policy(RetryPolicy::default().deadline(patience))
        .build()
        .unwrap();
    let started = std::time::Instant::now();

    let source = refused_for_good(&pool).await;
    assert!(source.to_string().contains("28000"), "{source}");

    // Two more refusals open the circuit, as any three failed connects do; from then
    // on no checkout dials, and none waits for a trial either.
    for _ in 0..2 {
        let err = pool.get().await.unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{err:?}");
        assert!(err.is_permanent(), "{err:?}");
    }
    assert_eq!(pool.status().circuit, CircuitState::Open);
    for _ in 0..5 {
        match pool.get().await.unwrap_err() {
            Error::CircuitOpen { last_error, .. } => {
                assert!(last_error.contains("28000"), "{last_error}");
            }
            other => panic!("{other:?}"),
        }
    }
    let err = select_one(&pool).await.unwrap_err();
    assert!(
        matches!(
            err,
            RunError::NotExecuted {
                reason: GiveUp::NoConnection,
                attempts: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        pool.stats().connect_failures,
        3,
        "the server saw three logins"
    );
    let took = started.elapsed();
    assert!(
        took < patience / 2,
        "{took:?}: a checkout waited on the circuit (circuit_wait {patience:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_does_not_exist_fails_at_once_for_good() {
    let Some(server) = PgServer::start() else {
        return;
    };
    // SQLSTATE 3D000: the server knows the role but not the database.
    let mut config = server.config();
    config.dbname("no_such_database");
    let patience = Duration::from_secs(30);
    let pool = Pool::builder(PgManager::new(config).unwrap())
        .wait_timeout(patience)
        .circuit_wait(patience)
        .retry_policy(RetryPolicy::default().deadline(patience))
        .build()
        .unwrap();
    let started = std::time::Instant::now();

    let source = refused_for_good(&pool).await;
    assert!(
        source.to_string().contains("3D000") && source.to_string().contains("no_such_database"),
        "{source}"
    );

    let err = pool.get().await.unwrap_err();
    let Error::Connect { source, .. } = &err else {
        panic!("the next checkout connects, and is refused the same way: {err:?}");
    };
    assert!(source.is_permanent(), "{source}");
    // A caller of `get()` reads it from the pool's error as well.
    assert!(err.is_permanent(), "{err:?}");
    assert_eq!(
        pool.stats().connect_failures,
        2,
        "one login per caller, none retried"
    );
    assert_eq!(pool.stats().opened, 0);
    let took = started.elapsed();
    assert!(
        took < patience / 2,
        "{took:?}: a caller waited for a database that does not exist"
    );
}

/// The query a user abandons: slow enough to be still running on the server when
/// the next user's query arrives behind it.
const ABANDONED: &str = "SELECT 'first'::text FROM pg_sleep(3)";

/// A pool of one connection, which nothing but its users touches.
fn one_connection(server: &PgServer, name: &str) -> Pool<PgManager> {
    Pool::builder(PgManager::new(server.config()).unwrap())
        .name(name)
        .max_size(1)
        .reaper_interval(Duration::from_secs(3600))
        .learn_idle_limit(false)
        .build()
        .unwrap()
}

/// The next user's query: its own text back, and the backend that answered.
async fn second_query(client: &tokio_postgres::Client) -> (String, i32) {
    let row = client
        .query_one("SELECT $1::text, pg_backend_pid()", &[&"second"])
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// A user starts a slow query and drops its future while the query is on the wire
/// (a timeout that fires, or a `select!` that took another branch); the connection
/// goes back to the pool. The next user, on the same connection (the pool holds one),
/// gets its own answer: the driver's task matched the late reply to the abandoned
/// request and threw it away. Nothing was closed or counted as broken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_abandoned_mid_flight_never_answers_the_next_user() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let pool = one_connection(&server, "abandoned-query");
    let admin = server.connect().await;
    let pid = backend_pid(&pool.get().await.unwrap()).await;

    // Cut before the first poll, at once, and while the request and its reply travel.
    for cut in [0, 1, 10, 100].map(Duration::from_millis) {
        let conn = pool.get().await.unwrap();
        let abandoned = tokio::time::timeout(cut, conn.query_one(ABANDONED, &[])).await;
        assert!(
            abandoned.is_err(),
            "{cut:?}: the slow query finished: {abandoned:?}"
        );
        drop(conn);
        let next = pool.get().await.unwrap();
        assert_eq!(
            second_query(&next).await,
            ("second".to_owned(), pid),
            "{cut:?}: the next user on the same connection"
        );
    }

    // Cut once the server is running it: its reply is certain to come.
    let conn = pool.get().await.unwrap();
    tokio::select! {
        reply = conn.query_one(ABANDONED, &[]) => panic!("the slow query finished first: {reply:?}"),
        () = wait_for_sleep(&admin, pid) => {}
    }
    drop(conn);
    let next = pool.get().await.unwrap();
    assert_eq!(second_query(&next).await, ("second".to_owned(), pid));
    drop(next);

    let stats = pool.stats();
    assert_eq!(stats.opened, 1, "{stats:?}");
    assert_eq!(stats.closed(), 0, "{stats:?}");
    assert_eq!(stats.all_resets(), 0, "{:?}", stats.reset_table());
    assert_eq!(pool.status().size, 1);
}

/// The same cut through `run_idempotent`: the operation did not finish, so the pool
/// closes its connection (eviction `cancelled`) rather than lend it again, and the
/// next run gets its own answer on a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_abandoned_mid_flight_closes_its_connection_and_the_next_run_gets_its_answer() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let pool = one_connection(&server, "abandoned-run");
    let admin = server.connect().await;
    let pid = backend_pid(&pool.get().await.unwrap()).await;

    tokio::select! {
        reply = pool.run_idempotent(async |conn| {
            let row = conn.query_one(ABANDONED, &[]).await?;
            Ok(row.get::<_, String>(0))
        }) => panic!("the slow query finished first: {reply:?}"),
        () = wait_for_sleep(&admin, pid) => {}
    }
    let (text, next_pid) = pool
        .run_idempotent(async |conn| {
            let row = conn
                .query_one("SELECT $1::text, pg_backend_pid()", &[&"second"])
                .await?;
            Ok((row.get::<_, String>(0), row.get::<_, i32>(1)))
        })
        .await
        .unwrap();
    assert_eq!(text, "second");
    assert_ne!(
        next_pid, pid,
        "the abandoned run's connection was lent again"
    );

    let stats = pool.stats();
    assert_eq!(stats.evictions(Eviction::Cancelled), 1, "{stats:?}");
    assert_eq!(stats.opened, 2, "{stats:?}");
    assert_eq!(stats.closed(), 1, "{stats:?}");
    assert_eq!(stats.all_resets(), 0, "{:?}", stats.reset_table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_connections_is_a_refusal_that_says_so_and_passes() {
    let Some(server) = PgServer::builder().max_connections(4).start() else {
        return;
    };
    let pool = pool_for(&server, "too-many");
    let mut hogs = Hogs::fill(&server).await;
    assert_eq!(hogs.len(), 4);

    let err = pool.get().await.unwrap_err();
    let Error::Connect { cause, source } = &err else {
        panic!("expected a connect error, got {err}");
    };
    assert_eq!(*cause, ResetCause::Refused);
    assert!(
        err.to_string().contains("too many connections") && err.to_string().contains("53300"),
        "{err}"
    );
    assert_eq!(
        source.classify(),
        Disposition::Broken {
            cause: ResetCause::Refused,
            sent: Sent::No
        }
    );
    assert!(pool.stats().resets(ResetCause::Refused, Phase::Connect) >= 1);

    hogs.release();
    let deadline = tokio::time::Instant::now() + SLACK;
    let conn = loop {
        match pool.get().await {
            Ok(conn) => break conn,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "no connection after the others left: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let one: i32 = conn.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_errors_are_application_errors_and_keep_the_connection() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let pool = pool_for(&server, "query-errors");
    let conn = pool.get().await.unwrap();
    let pid = backend_pid(&conn).await;
    for bad in ["SELECT 1/0", "SELECT * FROM no_such_table", "SELEKT 1"] {
        let err = conn.batch_execute(bad).await.unwrap_err();
        assert_eq!(err.classify(), Disposition::Application, "{bad}: {err:?}");
    }
    drop(conn);
    let again = pool.get().await.unwrap();
    assert_eq!(backend_pid(&again).await, pid, "the same connection");
    assert_eq!(pool.stats().all_resets(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrapped_deadpool_postgres_manager_gets_dead_connections_replaced() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let wrapped = deadpool_postgres::Manager::from_config(
        server.config(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(DeadpoolManager::new(wrapped))
        .name("deadpool-postgres")
        .check_after(Duration::from_millis(1))
        .build()
        .unwrap();
    let conn = pool.get().await.unwrap();
    let pid = backend_pid(&conn).await;
    drop(conn);

    let admin = server.connect().await;
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + SLACK;
    while backend_alive(&admin, pid).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "backend {pid} never exited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The pool cannot probe the wrapped socket: the dead connection is found by the
    // wrapped manager's own check (`recycle`, which asks the client whether it is
    // closed) at the next checkout.
    loop {
        let conn = pool.get().await.unwrap();
        if conn.is_closed() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never noticed the closed client"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let fresh = backend_pid(&conn).await;
        if fresh == pid {
            panic!("the terminated backend was handed out");
        }
        break;
    }
    assert_eq!(
        pool.stats().resets(ResetCause::PingFailed, Phase::Checkout),
        1
    );
}

/// A query given as text prepares a statement and closes it after returning; the
/// server's answer to the close lands after the connection went back to the pool. The
/// checkout probe must leave those bytes to the driver's task, not discard a healthy
/// connection as `unexpected_data`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_replies_on_a_healthy_connection_do_not_discard_it() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let pool = pool_for(&server, "pg-late-replies");
    let mut workers = Vec::new();
    for worker in 0..8_i32 {
        let pool = pool.clone();
        workers.push(tokio::spawn(async move {
            for i in 0..200_i32 {
                let conn = pool.get().await.unwrap();
                let row = conn
                    .query_one("SELECT $1::int4 + 1", &[&(worker * 1000 + i)])
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, i32>(0), worker * 1000 + i + 1);
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    assert_eq!(
        pool.stats().all_resets(),
        0,
        "{:?}",
        pool.stats().reset_table()
    );
    assert!(
        pool.stats().opened <= 10,
        "a fault-free load reconnected: {} connects",
        pool.stats().opened
    );
}
