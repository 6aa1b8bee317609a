//! The PostgreSQL and Redis drivers over Unix-domain sockets, against real servers:
//! sessions work, connections a stopped server closed are discarded while idle
//! (`peer_closed`, found by the probe or the driver's watch), and connects to a server
//! that is down are `refused` whether its socket file is left behind (`ECONNREFUSED`)
//! or removed (`ENOENT`). Without the servers' programs these tests say SKIPPED.

use std::time::Duration;

use steadypool::drivers::postgres::PgManager;
use steadypool::drivers::redis::RedisManager;
use steadypool::{Manager, Phase, Pool, ResetCause};
use steadypool_tests::eventually;
use steadypool_tests::faults;
use steadypool_tests::postgres::PgServer;
use steadypool_tests::recorded::Books;
use steadypool_tests::redis::RedisServer;

const TICK: Duration = Duration::from_millis(200);
/// Generous room for timing on a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(15);

fn build<M: Manager>(manager: M, name: &str) -> Pool<M> {
    Pool::builder(manager)
        .name(name)
        .reaper_interval(TICK)
        .learn_idle_limit(false)
        .build()
        .unwrap()
}

/// Checks `n` connections out at once, so that `n` are open; they go back idle.
async fn open_idle<M: Manager>(pool: &Pool<M>, n: usize) {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(pool.get().await.unwrap());
    }
}

async fn redis_ping(pool: &Pool<RedisManager>) {
    let mut conn = pool.get().await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut *conn).await.unwrap();
    assert_eq!(pong, "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_a_unix_socket_survives_a_crash_and_a_clean_stop() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let manager = RedisManager::new(server.unix_url()).unwrap();
    assert_eq!(manager.unix_socket(), Some(server.unix_socket().as_path()));
    let pool = build(manager, "redis-unix");

    let mut conn = pool.get().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut *conn)
        .await
        .unwrap();
    let v: String = redis::cmd("GET")
        .arg("k")
        .query_async(&mut *conn)
        .await
        .unwrap();
    assert_eq!(v, "v");
    // The server sees a Unix-socket client: its address is the socket's path.
    let info: String = redis::cmd("CLIENT")
        .arg("INFO")
        .query_async(&mut *conn)
        .await
        .unwrap();
    let socket = server.unix_socket();
    assert!(
        info.contains(&format!("laddr={}", socket.display())),
        "{info}"
    );
    drop(conn);
    open_idle(&pool, 2).await;
    assert_eq!(pool.status().idle, 2);

    // A crash: the kernel closes every connection at once, the socket file stays.
    server.kill();
    faults::assert_emptied_by_the_peer(&pool, 2).await;
    assert!(
        socket.exists(),
        "a killed redis-server leaves its socket file"
    );
    faults::assert_refused(pool.get().await);

    server.restart();
    redis_ping(&pool).await;

    // A clean stop removes the socket file: ENOENT, refused all the same.
    server.stop();
    assert!(
        !socket.exists(),
        "redis-server removes its socket file on SIGTERM"
    );
    assert!(
        eventually(SLACK, || pool.status().size == 0).await,
        "{:?}",
        pool.status()
    );
    faults::assert_refused(pool.get().await);
    assert!(pool.stats().resets(ResetCause::Refused, Phase::Connect) >= 2);

    server.restart();
    redis_ping(&pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_a_unix_socket_survives_a_stop_and_a_restart() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let manager = PgManager::new(server.unix_config()).unwrap();
    let socket = server
        .socket_dir()
        .join(format!(".s.PGSQL.{}", server.port()));
    assert_eq!(
        manager.target(),
        Some(format!("postgres://{}", socket.display()))
    );
    let pool = build(manager, "postgres-unix");

    let conn = pool.get().await.unwrap();
    // A Unix-socket session has no client address.
    let local: bool = conn
        .query_one(
            "SELECT client_addr IS NULL FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(local, "the session did not come over the Unix socket");
    drop(conn);
    open_idle(&pool, 2).await;
    assert_eq!(pool.status().idle, 2);

    // A fast shutdown ends every session (57P01) and removes the socket file.
    server.stop_fast();
    assert!(
        eventually(SLACK, || pool.status().size == 0).await,
        "connections to the stopped server stayed in the pool: {:?}",
        pool.status()
    );
    assert_eq!(
        pool.stats().resets_with_cause(ResetCause::PeerClosed),
        2,
        "{:?}",
        pool.stats().reset_table()
    );
    assert_eq!(pool.stats().all_resets(), 2);
    assert!(!socket.exists(), "PostgreSQL removes its socket file");
    faults::assert_refused(pool.get().await);
    assert!(pool.stats().resets(ResetCause::Refused, Phase::Connect) >= 1);

    server.restart();
    let conn = pool.get().await.unwrap();
    let one: i32 = conn.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}
