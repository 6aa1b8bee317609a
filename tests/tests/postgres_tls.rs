//! PostgreSQL over TLS (`ssl = on`, a certificate made at test time) through the
//! driver's rustls connector: sessions are encrypted and verified, a server that does
//! not prove its name is refused, and a session the server closes while idle is
//! `peer_closed` and teaches the pool the server's idle limit, as without TLS. Without
//! root or the PostgreSQL programs these tests say SKIPPED.

use std::time::Duration;

use steadypool::drivers::postgres::PgManager;
use steadypool::drivers::tls::PgTls;
use steadypool::{GiveUp, Phase, Pool, ResetCause, RunError};
use steadypool_tests::postgres::PgServer;
use steadypool_tests::tls::TestCa;
use tokio_postgres::config::SslMode;

fn manager(server: &PgServer, ca: &TestCa) -> PgManager<PgTls> {
    with_options(server, ca, "")
}

/// With `options` for the server (`-c name=value ...`).
fn with_options(server: &PgServer, ca: &TestCa, options: &str) -> PgManager<PgTls> {
    let mut config = server.config();
    config.ssl_mode(SslMode::Require).options(options);
    PgManager::with_tls(config, PgTls::new(ca.client_config())).unwrap()
}

#[tokio::test]
async fn sessions_are_encrypted_verified_and_kept() {
    let ca = TestCa::new();
    let Some(server) = PgServer::builder().tls(&ca).start() else {
        return;
    };
    let pool = Pool::builder(manager(&server, &ca))
        .max_size(2)
        .reaper_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    for round in 0..50 {
        let conn = pool.get().await.unwrap();
        let row = conn
            .query_one(
                "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        assert!(row.get::<_, bool>(0), "round {round}: not encrypted");
        assert_eq!(row.get::<_, &str>(1), "TLSv1.3");
        drop(conn);
        if round % 10 == 0 {
            // Idle long enough for the reaper to probe it more than once.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let stats = pool.stats();
    assert_eq!(stats.opened, 1, "{stats:?}");
    assert_eq!(stats.closed(), 0, "{stats:?}");
}

#[tokio::test]
async fn a_server_that_cannot_prove_its_name_is_refused() {
    let ca = TestCa::new();
    let Some(server) = PgServer::builder().tls(&ca).start() else {
        return;
    };
    let stranger = TestCa::new();
    let pool = Pool::builder(manager(&server, &stranger)).build().unwrap();
    let err = pool.get().await.unwrap_err();
    assert!(format!("{err:?}").contains("InvalidCertificate"), "{err:?}");

    // The next attempt would be refused the same way: not retried.
    let err = pool
        .run_idempotent(async |conn| {
            conn.simple_query("SELECT 1").await?;
            Ok(())
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RunError::NotExecuted {
                reason: GiveUp::Permanent,
                attempts: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(format!("{err:?}").contains("InvalidCertificate"), "{err:?}");
    assert_eq!(pool.stats().connect_failures, 2);
}

#[tokio::test]
async fn the_servers_idle_timeout_is_peer_closed_and_teaches_the_idle_limit() {
    let ca = TestCa::new();
    let Some(server) = PgServer::builder().tls(&ca).start() else {
        return;
    };
    let server_idle = Duration::from_secs(1);
    let options = format!("-c idle_session_timeout={}", server_idle.as_millis());
    let manager = with_options(&server, &ca, &options);
    let pool = Pool::builder(manager)
        .idle_timeout(Some(Duration::from_secs(45)))
        .reaper_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let conn = pool.get().await.unwrap();
    conn.simple_query("SELECT 1").await.unwrap();
    drop(conn);
    tokio::time::sleep(server_idle + Duration::from_millis(700)).await;
    let conn = pool.get().await.unwrap();
    conn.simple_query("SELECT 1").await.unwrap();
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
    assert!(upper >= server_idle, "{limit:?}");
    assert!(limit.evict_after.unwrap() < upper, "{limit:?}");
}
