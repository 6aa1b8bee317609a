//! Kernel-level faults on a pool's upstream, each test in a private network namespace
//! (see `steadypool_tests::netns`): packets silently dropped by iptables (a black
//! hole), rejected with a TCP reset, and established connections destroyed with
//! `ss -K`. Keepalive must evict black-holed idle connections within
//! `idle + interval x count` plus one reaper tick, a request in flight into the black
//! hole must fail at `TCP_USER_TIMEOUT`, resets must be counted as `peer_reset`, and
//! after every scenario no socket of this process may sit in `CLOSE_WAIT` (as the
//! kernel reports it). Without root, iptables, ip, ss or unshare these tests say
//! SKIPPED.

use std::time::Duration;

use steadypool::{
    Classify, Dialer, Disposition, Keepalive, Phase, Pool, ResetCause, Sent, TcpState,
};
use steadypool_tests::line_manager::{LineManager, request};
use steadypool_tests::netns;
use steadypool_tests::recorded::Books;
use steadypool_tests::servers::LineServer;
use steadypool_tests::{eventually, sockets};
use tokio::time::Instant;

const HOUR: Duration = Duration::from_secs(3600);
/// Probe after 1 s of silence, every 1 s, give up after 2 unanswered probes.
const KEEPALIVE: Keepalive = Keepalive::new(Duration::from_secs(1), Duration::from_secs(1), 2);
const REAPER_TICK: Duration = Duration::from_secs(1);
/// Generous room for timing on a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(8);

fn pool_for(server: &LineServer, name: &str) -> Pool<LineManager> {
    Pool::builder(LineManager::new(server.addr()))
        .name(name)
        .keepalive(Some(KEEPALIVE))
        .reaper_interval(REAPER_TICK)
        .idle_timeout(None)
        .check_after(HOUR)
        .learn_idle_limit(false)
        .build()
        .unwrap()
}

/// Opens `n` connections at once, each answering a request, and lets them go idle.
async fn open_idle(pool: &Pool<LineManager>, n: usize) {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut conn = pool.get().await.unwrap();
        assert_eq!(request(&mut conn, "PING").await.unwrap(), "PONG");
        held.push(conn);
    }
}

/// No socket of this process to `port` is left, half-closed or otherwise.
async fn no_sockets_left(port: u16) {
    let gone = eventually(REAPER_TICK + SLACK, || {
        sockets::count_in_state(port, TcpState::CloseWait).unwrap() == 0
            && sockets::to_port(port).unwrap().is_empty()
    })
    .await;
    assert!(gone, "sockets left: {:?}", sockets::to_port(port).unwrap());
}

#[test]
fn keepalive_evicts_every_black_holed_idle_connection() {
    let Some(ns) = netns::isolate("keepalive_evicts_every_black_holed_idle_connection") else {
        return;
    };
    netns::runtime().block_on(async {
        let server = LineServer::start().await.unwrap();
        let port = server.addr().port();
        let pool = pool_for(&server, "black-hole-idle");
        open_idle(&pool, 4).await;

        ns.black_hole(port);
        let started = Instant::now();
        let bound = KEEPALIVE.detection_time() + REAPER_TICK;
        let evicted = eventually(bound + SLACK, || pool.status().size == 0).await;
        let took = started.elapsed();
        eprintln!("black-holed idle connections evicted after {took:?} (bound {bound:?})");
        assert!(evicted, "still pooled after {took:?}: {:?}", pool.status());
        assert_eq!(
            pool.stats()
                .resets(ResetCause::KeepaliveTimeout, Phase::Idle),
            4
        );
        assert_eq!(pool.stats().all_resets(), 4);
        no_sockets_left(port).await;
    });
}

#[test]
fn a_request_in_flight_into_a_black_hole_fails_at_the_user_timeout() {
    let Some(ns) =
        netns::isolate("a_request_in_flight_into_a_black_hole_fails_at_the_user_timeout")
    else {
        return;
    };
    netns::runtime().block_on(async {
        let server = LineServer::start().await.unwrap();
        let port = server.addr().port();
        let user_timeout = Duration::from_secs(2);
        let pool = Pool::builder(LineManager::new(server.addr()))
            .name("black-hole-busy")
            .keepalive(Some(KEEPALIVE))
            .user_timeout(Some(user_timeout))
            .reaper_interval(REAPER_TICK)
            .check_after(HOUR)
            .build()
            .unwrap();
        let mut conn = pool.get().await.unwrap();
        assert_eq!(request(&mut conn, "PING").await.unwrap(), "PONG");

        ns.black_hole(port);
        let started = Instant::now();
        let err = tokio::time::timeout(user_timeout + SLACK, request(&mut conn, "SET k v"))
            .await
            .expect("the request hung past the user timeout")
            .unwrap_err();
        let took = started.elapsed();
        eprintln!("request into the black hole failed after {took:?} ({err})");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
        assert!(
            took >= user_timeout,
            "failed before the user timeout: {took:?}"
        );
        assert_eq!(
            err.classify(),
            Disposition::Broken {
                cause: ResetCause::UserTimeout,
                sent: Sent::Maybe
            }
        );
        conn.mark_broken(ResetCause::UserTimeout);
        drop(conn);
        assert_eq!(
            pool.stats().resets(ResetCause::UserTimeout, Phase::InUse),
            1
        );
        no_sockets_left(port).await;
    });
}

#[test]
fn a_firewall_reset_is_peer_reset_idle_and_in_use() {
    let Some(ns) = netns::isolate("a_firewall_reset_is_peer_reset_idle_and_in_use") else {
        return;
    };
    netns::runtime().block_on(async {
        let server = LineServer::start().await.unwrap();
        let port = server.addr().port();
        let pool = pool_for(&server, "reject-reset");
        open_idle(&pool, 4).await;
        let mut busy = pool.get().await.unwrap();

        ns.reject_with_reset(port);
        // The busy connection's next request meets the reset.
        let err = request(&mut busy, "PING").await.unwrap_err();
        let Disposition::Broken { cause, .. } = err.classify() else {
            panic!("a reset connection is broken: {err}");
        };
        assert_eq!(cause, ResetCause::PeerReset, "{err}");
        busy.mark_broken(cause);
        drop(busy);
        // The idle ones meet it with their next keepalive probe, and the reaper sees it.
        let bound = KEEPALIVE.idle + REAPER_TICK;
        assert!(
            eventually(bound + SLACK, || pool.status().size == 0).await,
            "{:?}",
            pool.status()
        );
        assert_eq!(pool.stats().resets(ResetCause::PeerReset, Phase::InUse), 1);
        assert_eq!(pool.stats().resets(ResetCause::PeerReset, Phase::Idle), 3);
        no_sockets_left(port).await;
    });
}

#[test]
fn killed_established_connections_are_peer_reset() {
    let Some(ns) = netns::isolate("killed_established_connections_are_peer_reset") else {
        return;
    };
    netns::runtime().block_on(async {
        let server = LineServer::start().await.unwrap();
        let port = server.addr().port();
        let pool = pool_for(&server, "ss-kill");
        open_idle(&pool, 4).await;
        let mut busy = pool.get().await.unwrap();

        ns.kill_server_sockets(port);
        assert!(
            eventually(REAPER_TICK + SLACK, || pool.status().idle == 0).await,
            "{:?}",
            pool.status()
        );
        assert_eq!(pool.stats().resets(ResetCause::PeerReset, Phase::Idle), 3);
        let err = request(&mut busy, "PING").await.unwrap_err();
        let Disposition::Broken { cause, .. } = err.classify() else {
            panic!("a reset connection is broken: {err}");
        };
        assert!(
            matches!(cause, ResetCause::PeerReset | ResetCause::BrokenPipe),
            "{err}: {cause}"
        );
        busy.mark_broken(cause);
        drop(busy);
        assert_eq!(pool.status().size, 0);
        no_sockets_left(port).await;

        let mut fresh = pool.get().await.unwrap();
        assert_eq!(request(&mut fresh, "PING").await.unwrap(), "PONG");
    });
}

/// A free local port: nothing listens there, and a black hole on it makes a connect
/// hang instead of being refused.
fn free_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[test]
fn a_black_holed_first_address_leaves_time_for_the_next() {
    let Some(ns) = netns::isolate("a_black_holed_first_address_leaves_time_for_the_next") else {
        return;
    };
    netns::runtime().block_on(async {
        let server = LineServer::start().await.unwrap();
        let (hole, other_hole) = (free_port(), free_port());
        ns.black_hole(hole.port());
        ns.black_hole(other_hole.port());
        let connect_timeout = Duration::from_secs(4);
        let dialer = Dialer::new().connect_timeout(connect_timeout);

        let started = Instant::now();
        let stream = dialer
            .connect_any(&[hole, server.addr()])
            .await
            .expect("the second address answers within its share of connect_timeout");
        let took = started.elapsed();
        eprintln!("connected to the second address after {took:?}");
        assert_eq!(stream.peer_addr().unwrap(), server.addr());
        // The first address got its half, and spent it all: its SYNs vanished.
        assert!(took >= connect_timeout / 2, "{took:?}");

        let started = Instant::now();
        let err = dialer
            .connect_any(&[hole, other_hole])
            .await
            .expect_err("no address answers");
        let took = started.elapsed();
        assert_eq!(err.cause(), ResetCause::ConnectTimeout, "{err}");
        assert!(
            err.to_string().contains(&other_hole.port().to_string()),
            "{err}"
        );
        assert!(took < connect_timeout + SLACK, "{took:?}");
    });
}
