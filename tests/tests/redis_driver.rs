//! The Redis driver against a real redis-server: connections the server closes while
//! they sit in the pool (`CLIENT KILL`, its `timeout`, a crash) are found and replaced
//! before the application sees them, each counted with its cause, and no socket is
//! left in `CLOSE_WAIT`; a command abandoned mid-flight never hands its reply to the
//! next user. Without redis-server installed these tests say SKIPPED.

use std::time::Duration;

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use steadypool::TcpState;
use steadypool::drivers::redis::RedisManager;
use steadypool::{
    AttemptError, Classify, Disposition, Error, Eviction, GiveUp, Manager, Phase, Pool, ResetCause,
    RunError,
};
use steadypool_tests::faults;
use steadypool_tests::recorded::Books;
use steadypool_tests::redis::RedisServer;
use steadypool_tests::{eventually, sockets};

const TICK: Duration = Duration::from_millis(200);
/// Generous room for timing on a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(10);

fn pool_for(server: &RedisServer, name: &str) -> Pool<RedisManager> {
    Pool::builder(RedisManager::new(server.url()).unwrap())
        .name(name)
        .reaper_interval(TICK)
        .learn_idle_limit(false)
        .build()
        .unwrap()
}

/// Opens `n` connections at once and returns their Redis client ids; they go back to
/// the pool idle.
async fn open_idle(pool: &Pool<RedisManager>, n: usize) -> Vec<i64> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(pool.get().await.unwrap());
    }
    let mut ids = Vec::new();
    for conn in &mut held {
        ids.push(client_id(&mut **conn).await);
    }
    ids
}

async fn client_id(conn: &mut impl redis::aio::ConnectionLike) -> i64 {
    redis::cmd("CLIENT")
        .arg("ID")
        .query_async(conn)
        .await
        .unwrap()
}

async fn admin_command(admin: &mut MultiplexedConnection, args: &[&str]) -> redis::Value {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(admin).await.unwrap()
}

/// How many clients wait in a blocking command, as the server counts them.
async fn blocked_clients(admin: &mut MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(admin)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("blocked_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// A pool of one connection, whose commands wait as long as the server makes them,
/// and which nothing but its users touches.
fn one_connection(server: &RedisServer, name: &str) -> Pool<RedisManager> {
    Pool::builder(without_response_timeout(server))
        .name(name)
        .max_size(1)
        .reaper_interval(Duration::from_secs(3600))
        .learn_idle_limit(false)
        .build()
        .unwrap()
}

/// A manager whose commands wait as long as the server makes them: a BLPOP blocks
/// until its client is killed.
fn without_response_timeout(server: &RedisServer) -> RedisManager {
    RedisManager::new(server.url())
        .unwrap()
        .connection_config(AsyncConnectionConfig::new().set_response_timeout(None))
}

/// A command that blocks until the connection ends.
async fn block_forever(
    conn: &mut impl redis::aio::ConnectionLike,
) -> redis::RedisResult<redis::Value> {
    redis::cmd("BLPOP")
        .arg("never")
        .arg(0)
        .query_async(conn)
        .await
}

/// Kills client `id` once a client is blocked in a command.
async fn kill_when_blocked(admin: &mut MultiplexedConnection, id: i64) {
    let deadline = tokio::time::Instant::now() + SLACK;
    while blocked_clients(admin).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "BLPOP never blocked"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed = admin_command(admin, &["CLIENT", "KILL", "ID", &id.to_string()]).await;
    assert_eq!(killed, redis::Value::Int(1));
}

/// Every pooled socket to the server is gone and none lingers half-closed.
async fn no_sockets_left(port: u16) -> bool {
    eventually(SLACK, || {
        sockets::count_in_state(port, TcpState::CloseWait).unwrap() == 0
            && sockets::to_port(port).unwrap().is_empty()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_while_idle_never_reach_the_application() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let pool = pool_for(&server, "client-kill");
    let before = open_idle(&pool, 3).await;

    let mut admin = server.connect().await;
    let killed = admin_command(&mut admin, &["CLIENT", "KILL", "TYPE", "normal"]).await;
    assert_eq!(
        killed,
        redis::Value::Int(3),
        "the admin connection skips itself"
    );

    assert!(
        eventually(SLACK, || pool.status().size == 0).await,
        "killed connections stayed in the pool: {:?}",
        pool.status()
    );
    assert_eq!(pool.stats().resets(ResetCause::PeerClosed, Phase::Idle), 3);
    drop(admin);
    assert!(no_sockets_left(server.port()).await);

    let mut conn = pool.get().await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut *conn).await.unwrap();
    assert_eq!(pong, "PONG");
    assert!(!before.contains(&client_id(&mut *conn).await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_idle_timeout_closes_are_caught_idle_or_at_checkout() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let pool = pool_for(&server, "server-timeout");
    let mut admin = server.connect().await;
    admin_command(&mut admin, &["CONFIG", "SET", "timeout", "1"]).await;
    drop(admin);
    let before = open_idle(&pool, 3).await;

    let closed = || {
        pool.stats().resets(ResetCause::PeerClosed, Phase::Idle)
            + pool.stats().resets(ResetCause::PeerClosed, Phase::Checkout)
    };
    assert!(
        eventually(SLACK, || closed() == 3).await,
        "the server's idle closes were not all counted: {} of 3",
        closed()
    );
    assert_eq!(pool.stats().all_resets(), 3, "only peer_closed resets");
    assert!(no_sockets_left(server.port()).await);

    for _ in 0..3 {
        let mut conn = pool.get().await.unwrap();
        let id = client_id(&mut *conn).await;
        assert!(!before.contains(&id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_is_refused_while_down_and_recovered_after() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let pool = pool_for(&server, "crash");
    open_idle(&pool, 2).await;

    server.kill();
    faults::assert_emptied_by_the_peer(&pool, 2).await;
    assert!(no_sockets_left(server.port()).await);

    faults::assert_refused(pool.get().await);
    assert!(pool.stats().resets(ResetCause::Refused, Phase::Connect) >= 1);

    server.restart();
    let mut conn = pool.get().await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut *conn).await.unwrap();
    assert_eq!(pong, "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_errors_are_application_errors_and_keep_the_connection() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let pool = pool_for(&server, "app-errors");
    let mut conn = pool.get().await.unwrap();
    let id = client_id(&mut *conn).await;

    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("text")
        .query_async(&mut *conn)
        .await
        .unwrap();
    let wrong_type = redis::cmd("LPUSH")
        .arg("k")
        .arg("x")
        .query_async::<i64>(&mut *conn)
        .await
        .unwrap_err();
    assert_eq!(
        wrong_type.classify(),
        Disposition::Application,
        "{wrong_type}"
    );
    let not_a_number = redis::cmd("INCR")
        .arg("k")
        .query_async::<i64>(&mut *conn)
        .await
        .unwrap_err();
    assert_eq!(
        not_a_number.classify(),
        Disposition::Application,
        "{not_a_number}"
    );
    drop(conn);

    let mut again = pool.get().await.unwrap();
    assert_eq!(client_id(&mut *again).await, id, "the same connection");
    assert_eq!(pool.stats().all_resets(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_mid_command_is_broken_with_its_cause() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let pool = Pool::builder(without_response_timeout(&server))
        .name("mid-command")
        .reaper_interval(TICK)
        .build()
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    let id = client_id(&mut *conn).await;

    let blocked = tokio::spawn(async move {
        let result = block_forever(&mut *conn).await;
        (conn, result)
    });
    let mut admin = server.connect().await;
    kill_when_blocked(&mut admin, id).await;

    let (mut conn, result) = blocked.await.unwrap();
    let err = result.unwrap_err();
    let disposition = err.classify();
    let Disposition::Broken { cause, .. } = disposition else {
        panic!("a killed connection must be broken: {err} → {disposition:?}");
    };
    assert!(
        matches!(
            cause,
            ResetCause::PeerClosed | ResetCause::PeerReset | ResetCause::BrokenPipe
        ),
        "{err}: {cause}"
    );
    // The driver read the close before it failed the command: the manager says why.
    let broken = pool.manager().broken(&conn);
    assert!(
        broken.as_ref().is_some_and(|b| matches!(
            b.cause,
            ResetCause::PeerClosed | ResetCause::PeerReset
        ) && b.detail.is_some()),
        "{broken:?}"
    );
    conn.mark_broken(cause);
    drop(conn);
    drop(admin);
    assert_eq!(pool.stats().resets(cause, Phase::InUse), 1);
    assert!(no_sockets_left(server.port()).await);
}

/// A connection killed under a command and handed straight back: the next checkout,
/// at once, gets a fresh connection, every time. Redis closes a killed client without
/// a goodbye, so the end of stream that fails the command is the socket's own state:
/// the checkout sees it even before the driver task has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_mid_command_is_not_handed_out_again_even_at_once() {
    const RUNS: usize = 20;
    let Some(server) = RedisServer::start() else {
        return;
    };
    let pool = Pool::builder(without_response_timeout(&server))
        .name("killed-then-reused")
        .max_size(1)
        .reaper_interval(Duration::from_secs(3600))
        .learn_idle_limit(false)
        .build()
        .unwrap();
    let mut admin = server.connect().await;
    let mut failures = Vec::new();
    for run in 0..RUNS {
        let mut conn = pool.get().await.unwrap();
        let id = client_id(&mut *conn).await;
        let app = {
            let pool = pool.clone();
            tokio::spawn(async move {
                let killed = block_forever(&mut *conn).await;
                drop(conn);
                let mut next = pool.get().await.unwrap();
                let answer = redis::cmd("CLIENT")
                    .arg("ID")
                    .query_async::<i64>(&mut *next)
                    .await;
                (killed, answer)
            })
        };
        kill_when_blocked(&mut admin, id).await;
        let (killed, answer) = app.await.unwrap();
        assert!(killed.is_err(), "BLPOP survived the kill: {killed:?}");
        match answer {
            Ok(next) if next != id => {}
            Ok(_) => failures.push(format!("run {run}: the killed client answered")),
            Err(err) => failures.push(format!("run {run}: {err}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {RUNS} runs handed the dead connection out again: {failures:#?}",
        failures.len()
    );
    // Found when the killed connection came back (`broken()` on return) or, at the
    // latest, at the next checkout: never handed out.
    let counted: u64 = [Phase::InUse, Phase::Checkout]
        .into_iter()
        .map(|phase| {
            pool.stats().resets(ResetCause::PeerClosed, phase)
                + pool.stats().resets(ResetCause::PeerReset, phase)
        })
        .sum();
    assert_eq!(counted, RUNS as u64, "{:?}", pool.stats().reset_table());
    assert_eq!(
        pool.stats().all_resets(),
        RUNS as u64,
        "{:?}",
        pool.stats().reset_table()
    );
}

/// The command a user abandons: it blocks on an empty list until someone pushes
/// `first` onto it, and then answers with that element.
fn abandoned_command() -> redis::Cmd {
    let mut cmd = redis::cmd("BLPOP");
    cmd.arg("handoff").arg(30);
    cmd
}

/// The next user's command: its own text back, and the client that answered.
async fn second_command(conn: &mut impl redis::aio::ConnectionLike) -> (String, i64) {
    redis::pipe()
        .cmd("ECHO")
        .arg("second")
        .cmd("CLIENT")
        .arg("ID")
        .query_async(conn)
        .await
        .unwrap()
}

/// Waits until one client is blocked in a command.
async fn wait_until_blocked(admin: &mut MultiplexedConnection) {
    let deadline = tokio::time::Instant::now() + SLACK;
    while blocked_clients(admin).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "BLPOP never blocked"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Unblocks the abandoned BLPOP, if it reached the server; its reply is then on the
/// way, behind which the next user's command waits.
async fn release_abandoned(admin: &mut MultiplexedConnection) {
    admin_command(admin, &["RPUSH", "handoff", "first"]).await;
}

/// A user sends a command that blocks and drops its future while it waits for the
/// reply (a timeout that fires, or a `select!` that took another branch); the
/// connection goes back to the pool. The next user, on the same connection (the pool
/// holds one), gets its own answer, not the abandoned BLPOP's `first`: the driver's
/// task matched that reply to its request and threw it away. Nothing was closed or
/// counted as broken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_abandoned_mid_flight_never_answers_the_next_user() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let pool = one_connection(&server, "abandoned-command");
    let mut admin = server.connect().await;
    let id = client_id(&mut *pool.get().await.unwrap()).await;

    // Cut before the first poll, at once, and while the request travels; the next
    // user's command goes out before the abandoned one is answered, or after.
    for (cut, release_first) in [(0, false), (1, true), (10, false), (100, true)] {
        let cut = Duration::from_millis(cut);
        let mut conn = pool.get().await.unwrap();
        let abandoned = tokio::time::timeout(
            cut,
            abandoned_command().query_async::<redis::Value>(&mut *conn),
        )
        .await;
        assert!(abandoned.is_err(), "{cut:?}: BLPOP answered: {abandoned:?}");
        drop(conn);
        let mut next = pool.get().await.unwrap();
        let answer = if release_first {
            release_abandoned(&mut admin).await;
            second_command(&mut *next).await
        } else {
            let (answer, ()) = tokio::join!(second_command(&mut *next), async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                release_abandoned(&mut admin).await;
            });
            answer
        };
        assert_eq!(
            answer,
            ("second".to_owned(), id),
            "{cut:?}: the next user on the same connection"
        );
        admin_command(&mut admin, &["DEL", "handoff"]).await;
    }

    // Cut once the server holds it blocked: its reply is certain to come.
    let mut conn = pool.get().await.unwrap();
    let blpop = abandoned_command();
    tokio::select! {
        reply = blpop.query_async::<redis::Value>(&mut *conn) => {
            panic!("BLPOP answered first: {reply:?}")
        }
        () = wait_until_blocked(&mut admin) => {}
    }
    drop(conn);
    let mut next = pool.get().await.unwrap();
    let (answer, ()) = tokio::join!(second_command(&mut *next), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        release_abandoned(&mut admin).await;
    });
    assert_eq!(answer, ("second".to_owned(), id));
    drop(next);
    // The abandoned BLPOP ran: it took the element its reply carried.
    let left: i64 = redis::cmd("LLEN")
        .arg("handoff")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(left, 0, "the abandoned BLPOP never took its element");

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
    let Some(server) = RedisServer::start() else {
        return;
    };
    let pool = one_connection(&server, "abandoned-run");
    let mut admin = server.connect().await;
    let id = client_id(&mut *pool.get().await.unwrap()).await;

    tokio::select! {
        reply = pool.run_idempotent(async |conn| {
            Ok(abandoned_command().query_async::<redis::Value>(conn).await?)
        }) => panic!("BLPOP answered first: {reply:?}"),
        () = wait_until_blocked(&mut admin) => {}
    }
    let (text, next_id) = pool
        .run_idempotent(async |conn| {
            Ok(redis::pipe()
                .cmd("ECHO")
                .arg("second")
                .cmd("CLIENT")
                .arg("ID")
                .query_async::<(String, i64)>(conn)
                .await?)
        })
        .await
        .unwrap();
    assert_eq!(text, "second");
    assert_ne!(next_id, id, "the abandoned run's connection was lent again");

    let stats = pool.stats();
    assert_eq!(stats.evictions(Eviction::Cancelled), 1, "{stats:?}");
    assert_eq!(stats.opened, 2, "{stats:?}");
    assert_eq!(stats.closed(), 1, "{stats:?}");
    assert_eq!(stats.all_resets(), 0, "{:?}", stats.reset_table());
}

/// A password the server refuses is a connect failure for good: the caller hears it
/// at once, from `run_idempotent` and from `get()` alike, with the server's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_fail_at_once_for_good() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut admin = server.connect().await;
    admin_command(&mut admin, &["CONFIG", "SET", "requirepass", "secret"]).await;
    let wrong = RedisManager::new(format!("redis://:wrong@{}/0", server.addr())).unwrap();
    let pool = Pool::builder(wrong).build().unwrap();

    let err = pool
        .run_idempotent(async |conn| Ok(redis::cmd("PING").query_async::<String>(conn).await?))
        .await
        .unwrap_err();
    let RunError::NotExecuted {
        reason: GiveUp::Permanent,
        attempts: 1,
        source: Some(AttemptError::Checkout(Error::Connect { source, .. })),
        ..
    } = &err
    else {
        panic!("not retried, with the driver's error: {err:?}");
    };
    assert!(source.is_permanent(), "{source}");
    // redis-rs names the server's WRONGPASS this way.
    assert!(
        source
            .to_string()
            .contains("Password authentication failed"),
        "{source}"
    );

    let err = pool.get().await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(err.is_permanent(), "{err:?}");
    assert_eq!(pool.stats().connect_failures, 2, "one login per caller");

    let right = RedisManager::new(format!("redis://:secret@{}/0", server.addr())).unwrap();
    let pool = Pool::builder(right).build().unwrap();
    let mut conn = pool.get().await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut *conn).await.unwrap();
    assert_eq!(pong, "PONG");
}
