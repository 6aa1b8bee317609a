//! TLS connections against an in-process rustls server (TLS 1.2 and 1.3): records the
//! TLS layer sends on its own (session tickets, KeyUpdate) never cost a healthy
//! connection, a close_notify is `peer_closed` and teaches the pool the server's idle
//! limit, a fatal alert is a reset, and application bytes on an idle connection are
//! still `unexpected_data`.

use std::time::Duration;

use rustls::SupportedProtocolVersion;
use steadypool::drivers::tls::{TlsManager, TlsStream};
use steadypool::{Phase, Pool, PoolBuilder, ResetCause};
use steadypool_tests::tls::{Act, TLS12, TLS13, TestCa, TlsServer, TlsServerOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const VERSIONS: [(&str, &[&SupportedProtocolVersion]); 2] =
    [("TLS 1.3", TLS13), ("TLS 1.2", TLS12)];

/// Long enough for the server's records to reach the client's socket.
const SETTLE: Duration = Duration::from_millis(100);

async fn server(ca: &TestCa, options: TlsServerOptions) -> TlsServer {
    TlsServer::start(ca, options).await
}

fn builder(ca: &TestCa, server: &TlsServer) -> PoolBuilder<TlsManager> {
    let manager = TlsManager::new(server.addr(), ca.client_config(), "localhost").unwrap();
    Pool::builder(manager)
        .max_size(4)
        // The probe alone decides: no idle timeout of the pool's own in the way.
        .idle_timeout(None)
        .reaper_interval(Duration::from_secs(3600))
}

/// One request: `PING`, answered by `PONG`.
async fn ping(conn: &mut TlsStream) {
    conn.write_all(b"PING\n").await.unwrap();
    let mut reply = [0u8; 5];
    conn.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"PONG\n");
}

fn protocol(conn: &mut TlsStream) -> rustls::ProtocolVersion {
    conn.session().protocol_version().unwrap()
}

#[tokio::test]
async fn a_request_on_every_checkout_keeps_one_connection() {
    let ca = TestCa::new();
    for (name, versions) in VERSIONS {
        let server = server(
            &ca,
            TlsServerOptions {
                versions,
                ..Default::default()
            },
        )
        .await;
        let pool = builder(&ca, &server).build().unwrap();
        for _ in 0..200 {
            let mut conn = pool.get().await.unwrap();
            ping(&mut conn).await;
        }
        assert_eq!(server.handshakes(), 1, "{name}");
        assert_eq!(pool.stats().closed(), 0, "{name}: {:?}", pool.stats());
    }
}

#[tokio::test]
async fn a_new_connection_returned_unused_is_reused() {
    let ca = TestCa::new();
    for (name, versions) in VERSIONS {
        let server = server(
            &ca,
            TlsServerOptions {
                versions,
                ..Default::default()
            },
        )
        .await;
        let mut discarded = 0;
        for _ in 0..20 {
            let pool = builder(&ca, &server).max_size(1).build().unwrap();
            let mut conn = pool.get().await.unwrap();
            assert_eq!(protocol(&mut conn), versions[0].version, "{name}");
            drop(conn);
            // TLS 1.3's session tickets arrive now, while the connection is idle.
            tokio::time::sleep(SETTLE).await;
            let mut conn = pool.get().await.unwrap();
            ping(&mut conn).await;
            drop(conn);
            discarded += pool.stats().closed();
        }
        assert_eq!(server.handshakes(), 20, "{name}");
        assert_eq!(discarded, 0, "{name}");
    }
}

#[tokio::test]
async fn the_reaper_keeps_its_own_idle_connections() {
    let ca = TestCa::new();
    for (name, versions) in VERSIONS {
        let server = server(
            &ca,
            TlsServerOptions {
                versions,
                ..Default::default()
            },
        )
        .await;
        let pool = builder(&ca, &server)
            .min_idle(2)
            .reaper_interval(Duration::from_millis(200))
            .build()
            .unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(server.handshakes(), 2, "{name}: {:?}", pool.stats());
        assert_eq!(pool.stats().closed(), 0, "{name}: {:?}", pool.stats());
    }
}

#[tokio::test]
async fn key_updates_cost_no_connection() {
    let ca = TestCa::new();
    let server = server(
        &ca,
        TlsServerOptions {
            key_update_after_reply: true,
            ..Default::default()
        },
    )
    .await;
    let pool = builder(&ca, &server).build().unwrap();
    for _ in 0..30 {
        let mut conn = pool.get().await.unwrap();
        ping(&mut conn).await;
        drop(conn);
        // The KeyUpdate sent after the reply reaches the idle connection.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And one sent to a connection that has been idle a while.
    assert_eq!(server.act(Act::KeyUpdate), 1);
    tokio::time::sleep(SETTLE).await;
    let mut conn = pool.get().await.unwrap();
    ping(&mut conn).await;
    assert_eq!(server.handshakes(), 1);
    assert_eq!(pool.stats().closed(), 0, "{:?}", pool.stats());
}

#[tokio::test]
async fn close_notify_is_peer_closed_and_teaches_the_idle_limit() {
    let ca = TestCa::new();
    let server_idle = Duration::from_millis(800);
    for (name, versions) in VERSIONS {
        let server = server(
            &ca,
            TlsServerOptions {
                versions,
                idle_timeout: Some(server_idle),
                ..Default::default()
            },
        )
        .await;
        let pool = builder(&ca, &server)
            .idle_timeout(Some(Duration::from_secs(45)))
            .build()
            .unwrap();
        let mut conn = pool.get().await.unwrap();
        ping(&mut conn).await;
        drop(conn);
        tokio::time::sleep(server_idle + Duration::from_millis(400)).await;
        let mut conn = pool.get().await.unwrap();
        ping(&mut conn).await;
        drop(conn);
        let stats = pool.stats();
        // Found before the application touched it: by that checkout, or by a reaper
        // tick that happened to fall in the sleep (its phase is random).
        assert_eq!(
            stats.resets(ResetCause::PeerClosed, Phase::Checkout)
                + stats.resets(ResetCause::PeerClosed, Phase::Idle),
            1,
            "{name}: {stats:?}"
        );
        assert_eq!(stats.closed(), 1, "{name}: {stats:?}");
        let limit = pool.idle_limit();
        let upper = limit.upper.expect("the close taught an upper bound");
        assert!(
            upper >= server_idle && upper < Duration::from_secs(3),
            "{name}: {limit:?}"
        );
        // One close is evidence enough to evict below it from now on, instead of
        // meeting the same close after every idle spell.
        let evict_after = limit.evict_after.unwrap();
        assert!(evict_after < upper, "{name}: {limit:?}");
        assert_eq!(server.handshakes(), 2, "{name}");
    }
}

#[tokio::test]
async fn the_reaper_finds_a_close_notify_as_peer_closed() {
    let ca = TestCa::new();
    for (name, versions) in VERSIONS {
        let server = server(
            &ca,
            TlsServerOptions {
                versions,
                ..Default::default()
            },
        )
        .await;
        let pool = builder(&ca, &server)
            .reaper_interval(Duration::from_millis(100))
            .build()
            .unwrap();
        let mut conn = pool.get().await.unwrap();
        ping(&mut conn).await;
        drop(conn);
        assert_eq!(server.act(Act::CloseNotify), 1);
        let found = steadypool_tests::eventually(Duration::from_secs(10), || {
            pool.stats().resets(ResetCause::PeerClosed, Phase::Idle) == 1
        })
        .await;
        assert!(found, "{name}: {:?}", pool.stats());
        assert_eq!(pool.stats().closed(), 1, "{name}: {:?}", pool.stats());
    }
}

#[tokio::test]
async fn a_fatal_alert_is_a_reset() {
    let ca = TestCa::new();
    for (name, versions) in VERSIONS {
        let server = server(
            &ca,
            TlsServerOptions {
                versions,
                ..Default::default()
            },
        )
        .await;
        let pool = builder(&ca, &server).build().unwrap();
        let mut conn = pool.get().await.unwrap();
        ping(&mut conn).await;
        drop(conn);
        assert_eq!(server.act(Act::FatalAlert), 1);
        tokio::time::sleep(SETTLE).await;
        let mut conn = pool.get().await.unwrap();
        ping(&mut conn).await;
        let stats = pool.stats();
        assert_eq!(
            stats.resets(ResetCause::PeerReset, Phase::Checkout),
            1,
            "{name}: {stats:?}"
        );
        assert_eq!(stats.closed(), 1, "{name}: {stats:?}");
    }
}

#[tokio::test]
async fn application_bytes_on_an_idle_connection_are_unexpected_data() {
    let ca = TestCa::new();
    for (name, versions) in VERSIONS {
        let server = server(
            &ca,
            TlsServerOptions {
                versions,
                ..Default::default()
            },
        )
        .await;
        let pool = builder(&ca, &server).build().unwrap();
        let mut conn = pool.get().await.unwrap();
        ping(&mut conn).await;
        drop(conn);
        assert_eq!(server.act(Act::Data), 1);
        tokio::time::sleep(SETTLE).await;
        let mut conn = pool.get().await.unwrap();
        ping(&mut conn).await;
        let stats = pool.stats();
        assert_eq!(
            stats.resets(ResetCause::UnexpectedData, Phase::Checkout),
            1,
            "{name}: {stats:?}"
        );
        assert_eq!(stats.closed(), 1, "{name}: {stats:?}");
    }
}

#[tokio::test]
async fn a_reply_left_unread_in_the_tls_layer_is_unexpected_data() {
    let ca = TestCa::new();
    for (name, versions) in VERSIONS {
        let server = server(
            &ca,
            TlsServerOptions {
                versions,
                ..Default::default()
            },
        )
        .await;
        let pool = builder(&ca, &server).max_size(1).build().unwrap();
        let mut conn = pool.get().await.unwrap();
        conn.write_all(b"PING\nPING\n").await.unwrap();
        // Both replies reach the socket; one read takes both records off it, and
        // rustls keeps the second reply: the kernel has nothing left to show.
        tokio::time::sleep(SETTLE).await;
        let mut reply = [0u8; 5];
        conn.read_exact(&mut reply).await.unwrap();
        drop(conn);
        let mut conn = pool.get().await.unwrap();
        ping(&mut conn).await;
        let stats = pool.stats();
        assert_eq!(stats.closed(), 1, "{name}: {stats:?}");
        // Found when the connection comes back, or at the next checkout.
        assert_eq!(
            stats.resets(ResetCause::UnexpectedData, Phase::Checkout)
                + stats.resets(ResetCause::UnexpectedData, Phase::InUse),
            1,
            "{name}: {stats:?}"
        );
    }
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let ca = TestCa::new();
    let server = server(&ca, TlsServerOptions::default()).await;
    let manager = TlsManager::new(server.addr(), ca.client_config(), "db.internal").unwrap();
    let pool = Pool::builder(manager).build().unwrap();
    let err = pool.get().await.unwrap_err();
    assert!(format!("{err:?}").contains("NotValidForName"), "{err:?}");
    let stranger = TestCa::new();
    let manager = TlsManager::new(server.addr(), stranger.client_config(), "localhost").unwrap();
    let pool = Pool::builder(manager).build().unwrap();
    let err = pool.get().await.unwrap_err();
    // The stranger's authority has the same name as the server's: the signature
    // gives it away.
    assert!(format!("{err:?}").contains("InvalidCertificate"), "{err:?}");
    assert_eq!(server.handshakes(), 0);
}
