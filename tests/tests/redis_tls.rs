//! Redis over TLS (`rediss://`, `redis-server --tls-port` with a certificate made at
//! test time): commands run on verified sessions that the pool keeps, and a session
//! the server closes while idle (`timeout`) is `peer_closed` and teaches the pool the
//! server's idle limit. Without `redis-server` these tests say SKIPPED.

use std::time::Duration;

use steadypool::drivers::redis::RedisManager;
use steadypool::{Phase, Pool, ResetCause};
use steadypool_tests::redis::RedisServer;
use steadypool_tests::tls::TestCa;

#[tokio::test]
async fn commands_run_over_tls_on_one_kept_connection() {
    let ca = TestCa::new();
    let Some(server) = RedisServer::start_tls(&ca) else {
        return;
    };
    let manager = RedisManager::with_tls(&server.tls_url(), ca.client_config()).unwrap();
    let pool = Pool::builder(manager)
        .max_size(2)
        .reaper_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    for round in 0..50 {
        let mut conn = pool.get().await.unwrap();
        let _: () = redis::cmd("SET")
            .arg("greeting")
            .arg(round)
            .query_async(&mut *conn)
            .await
            .unwrap();
        let got: i64 = redis::cmd("GET")
            .arg("greeting")
            .query_async(&mut *conn)
            .await
            .unwrap();
        assert_eq!(got, round);
        drop(conn);
        if round % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let stats = pool.stats();
    assert_eq!(stats.opened, 1, "{stats:?}");
    assert_eq!(stats.closed(), 0, "{stats:?}");

    let stranger = TestCa::new();
    let manager = RedisManager::with_tls(&server.tls_url(), stranger.client_config()).unwrap();
    let err = Pool::builder(manager)
        .build()
        .unwrap()
        .get()
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("InvalidCertificate"), "{err:?}");
}

#[tokio::test]
async fn the_servers_idle_timeout_is_peer_closed_and_teaches_the_idle_limit() {
    let ca = TestCa::new();
    let Some(server) = RedisServer::start_tls(&ca) else {
        return;
    };
    let mut admin = server.connect().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("timeout")
        .arg("1")
        .query_async(&mut admin)
        .await
        .unwrap();
    let manager = RedisManager::with_tls(&server.tls_url(), ca.client_config()).unwrap();
    let pool = Pool::builder(manager)
        .idle_timeout(Some(Duration::from_secs(45)))
        .reaper_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    let _: () = redis::cmd("PING").query_async(&mut *conn).await.unwrap();
    drop(conn);
    // Redis looks for idle clients about once a second.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let mut conn = pool.get().await.unwrap();
    let _: () = redis::cmd("PING").query_async(&mut *conn).await.unwrap();
    drop(conn);
    let stats = pool.stats();
    assert_eq!(
        stats.resets(ResetCause::PeerClosed, Phase::Checkout),
        1,
        "{stats:?}"
    );
    assert_eq!(stats.closed(), 1, "{stats:?}");
    let limit = pool.idle_limit();
    let upper = limit.upper.expect("the close taught an upper bound");
    assert!(upper >= Duration::from_secs(1), "{limit:?}");
    assert!(limit.evict_after.unwrap() < upper, "{limit:?}");
}
