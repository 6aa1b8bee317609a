//! The pool's socket options are on every pooled connection, as the kernel reports
//! them back through `getsockopt`.

use std::time::Duration;

use socket2::SockRef;
use steadypool::drivers::tcp::TcpManager;
use steadypool::{BuildError, Dialer, Keepalive, Manager, Pool, SocketSettingError};
use steadypool_tests::line_manager::LineManager;
use steadypool_tests::servers::LineServer;

struct Read {
    keepalive: bool,
    idle: Duration,
    interval: Duration,
    count: u32,
    user_timeout: Option<Duration>,
    nodelay: bool,
}

fn read_back(sock: SockRef<'_>) -> Read {
    Read {
        keepalive: sock.keepalive().unwrap(),
        idle: sock.tcp_keepalive_time().unwrap(),
        interval: sock.tcp_keepalive_interval().unwrap(),
        count: sock.tcp_keepalive_retries().unwrap(),
        user_timeout: sock.tcp_user_timeout().unwrap(),
        nodelay: sock.tcp_nodelay().unwrap(),
    }
}

#[tokio::test]
async fn defaults_find_a_dead_peer_in_19_seconds() {
    let server = LineServer::start().await.unwrap();
    let pool = Pool::builder(TcpManager::new(server.addr()))
        .build()
        .unwrap();
    let conn = pool.get().await.unwrap();
    let got = read_back(SockRef::from(&*conn));
    assert!(got.keepalive, "SO_KEEPALIVE is off");
    assert_eq!(got.idle, Duration::from_secs(10));
    assert_eq!(got.interval, Duration::from_secs(3));
    assert_eq!(got.count, 3);
    // The user timeout follows keepalive: 10 + 3 x 3 s.
    assert_eq!(got.user_timeout, Some(Duration::from_secs(19)));
    assert!(got.nodelay, "TCP_NODELAY is off");
}

#[tokio::test]
async fn configured_options_reach_the_kernel_through_a_custom_manager() {
    let server = LineServer::start().await.unwrap();
    let pool = Pool::builder(LineManager::new(server.addr()))
        .keepalive(Some(Keepalive::new(
            Duration::from_secs(7),
            Duration::from_secs(2),
            4,
        )))
        .user_timeout(Some(Duration::from_millis(1500)))
        .nodelay(false)
        .build()
        .unwrap();
    let conn = pool.get().await.unwrap();
    // The pool sees the socket through the manager, as the probe does.
    let socket = pool.manager().socket(&conn).unwrap();
    let got = read_back(socket.sock_ref());
    assert!(got.keepalive);
    assert_eq!(got.idle, Duration::from_secs(7));
    assert_eq!(got.interval, Duration::from_secs(2));
    assert_eq!(got.count, 4);
    assert_eq!(got.user_timeout, Some(Duration::from_millis(1500)));
    assert!(!got.nodelay);
}

#[tokio::test]
async fn keepalive_timing_alone_sets_a_matching_user_timeout() {
    let server = LineServer::start().await.unwrap();
    let pool = Pool::builder(TcpManager::new(server.addr()))
        .keepalive(Some(Keepalive::new(
            Duration::from_secs(5),
            Duration::from_secs(1),
            2,
        )))
        .build()
        .unwrap();
    let conn = pool.get().await.unwrap();
    let got = read_back(SockRef::from(&*conn));
    assert_eq!(got.user_timeout, Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn keepalive_and_user_timeout_can_be_left_to_the_kernel() {
    let server = LineServer::start().await.unwrap();
    let pool = Pool::builder(TcpManager::new(server.addr()))
        .keepalive(None)
        .user_timeout(None)
        .build()
        .unwrap();
    let conn = pool.get().await.unwrap();
    let got = read_back(SockRef::from(&*conn));
    assert!(!got.keepalive);
    assert_eq!(got.user_timeout, None);
    assert!(got.nodelay);
}

#[tokio::test]
async fn every_connection_gets_the_options_not_just_the_first() {
    let server = LineServer::start().await.unwrap();
    let pool = Pool::builder(TcpManager::new(server.addr()))
        .max_size(4)
        .user_timeout(Some(Duration::from_millis(2500)))
        .build()
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(pool.get().await.unwrap());
    }
    for conn in &held {
        let got = read_back(SockRef::from(&**conn));
        assert!(got.keepalive);
        assert_eq!(got.user_timeout, Some(Duration::from_millis(2500)));
    }
}

#[tokio::test]
async fn a_dialer_built_by_hand_sets_every_socket_and_is_checked_by_build() {
    let server = LineServer::start().await.unwrap();
    let dialer = Dialer::new()
        .keepalive(Some(Keepalive::new(
            Duration::from_secs(4),
            Duration::from_secs(2),
            5,
        )))
        .nodelay(false);
    let pool = Pool::builder(TcpManager::new(server.addr()))
        .user_timeout(Some(Duration::from_secs(1)))
        // Replaces every socket setting made before it ...
        .dialer(dialer.clone())
        .build()
        .unwrap();
    let conn = pool.get().await.unwrap();
    let got = read_back(SockRef::from(&*conn));
    assert_eq!(got.idle, Duration::from_secs(4));
    assert_eq!(got.count, 5);
    // ... so the user timeout follows this keepalive: 4 + 2 x 5 s.
    assert_eq!(got.user_timeout, Some(Duration::from_secs(14)));
    assert!(!got.nodelay);

    // A knob set after it changes that dialer.
    let pool = Pool::builder(TcpManager::new(server.addr()))
        .dialer(dialer.clone())
        .nodelay(true)
        .build()
        .unwrap();
    let conn = pool.get().await.unwrap();
    let got = read_back(SockRef::from(&*conn));
    assert_eq!(got.idle, Duration::from_secs(4));
    assert!(got.nodelay);

    let no_probes = Keepalive::new(Duration::from_secs(4), Duration::from_secs(2), 0);
    let err = Pool::builder(TcpManager::new(server.addr()))
        .dialer(dialer.keepalive(Some(no_probes)))
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            BuildError::Socket(SocketSettingError::KeepaliveOutOfRange {
                knob: "keepalive count",
                ..
            })
        ),
        "{err:?}"
    );
}
