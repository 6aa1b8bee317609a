//! A pool behind the chaos proxy: each fault the proxy injects reaches the pool as the
//! cause it stands for (a load balancer's idle close as `peer_closed` or `peer_reset`
//! found while idle, a crash as `peer_reset`, refusal as `refused`, a hung path as a
//! failed checkout ping), the pool's counts match the proxy's, and no socket is left
//! in `CLOSE_WAIT`.

use std::time::Duration;

use steadypool::TcpState;
use steadypool::chaos::{ChaosProxy, ChaosStats, Faults, IdleClose};
use steadypool::{Classify, Disposition, Phase, Pool, ResetCause};
use steadypool_tests::faults;
use steadypool_tests::line_manager::{LineManager, request};
use steadypool_tests::recorded::Books;
use steadypool_tests::servers::LineServer;
use steadypool_tests::{eventually, sockets};

const HOUR: Duration = Duration::from_secs(3600);
const TICK: Duration = Duration::from_millis(100);
/// Generous room for timing on a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(10);

struct Setup {
    _server: LineServer,
    proxy: ChaosProxy,
    pool: Pool<LineManager>,
}

/// A line server behind a proxy with `faults`, and a pool to the proxy that pings
/// only connections idle for an hour (so the probe alone finds the dead ones).
async fn setup(name: &str, faults: Faults) -> Setup {
    let server = LineServer::start().await.unwrap();
    let proxy = ChaosProxy::builder(server.addr())
        .seed(7)
        .faults(faults)
        .start()
        .await
        .unwrap();
    let pool = Pool::builder(LineManager::new(proxy.local_addr()))
        .name(name)
        .reaper_interval(TICK)
        .check_after(HOUR)
        .learn_idle_limit(false)
        .build()
        .unwrap();
    Setup {
        _server: server,
        proxy,
        pool,
    }
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

async fn no_close_wait(port: u16) -> bool {
    eventually(SLACK, || {
        sockets::count_in_state(port, TcpState::CloseWait).unwrap() == 0
    })
    .await
}

async fn wait_for_stats(proxy: &ChaosProxy, done: impl Fn(&ChaosStats) -> bool) -> ChaosStats {
    assert!(
        eventually(SLACK, || done(&proxy.stats())).await,
        "{:?}",
        proxy.stats()
    );
    proxy.stats()
}

#[tokio::test]
async fn an_idle_close_with_fin_is_found_while_idle_as_peer_closed() {
    let s = setup(
        "idle-fin",
        Faults {
            idle_close: Some(IdleClose::fin(Duration::from_millis(400))),
            ..Faults::none()
        },
    )
    .await;
    open_idle(&s.pool, 3).await;
    let stats = wait_for_stats(&s.proxy, |st| st.idle_fin == 3).await;
    assert!(eventually(SLACK, || s.pool.status().size == 0).await);
    assert_eq!(
        s.pool.stats().resets(ResetCause::PeerClosed, Phase::Idle),
        stats.idle_fin
    );
    assert!(no_close_wait(s.proxy.local_addr().port()).await);
}

#[tokio::test]
async fn an_idle_close_with_rst_is_found_while_idle_as_peer_reset() {
    let s = setup(
        "idle-rst",
        Faults {
            idle_close: Some(IdleClose::rst(Duration::from_millis(400))),
            ..Faults::none()
        },
    )
    .await;
    open_idle(&s.pool, 3).await;
    let stats = wait_for_stats(&s.proxy, |st| st.idle_rst == 3).await;
    assert!(eventually(SLACK, || s.pool.status().size == 0).await);
    assert_eq!(
        s.pool.stats().resets(ResetCause::PeerReset, Phase::Idle),
        stats.idle_rst
    );
    assert!(no_close_wait(s.proxy.local_addr().port()).await);
    let mut conn = s.pool.get().await.unwrap();
    assert_eq!(request(&mut conn, "PING").await.unwrap(), "PONG");
}

#[tokio::test]
async fn a_crash_resets_every_pooled_connection_and_the_pool_counts_each() {
    let s = setup("crash", Faults::none()).await;
    open_idle(&s.pool, 4).await;
    assert_eq!(s.proxy.crash().await, 4);
    assert!(eventually(SLACK, || s.pool.status().size == 0).await);
    assert_eq!(s.pool.stats().resets(ResetCause::PeerReset, Phase::Idle), 4);
    assert_eq!(s.proxy.stats().crash_resets, 4);
    assert!(no_close_wait(s.proxy.local_addr().port()).await);
}

#[tokio::test]
async fn a_refusing_upstream_fails_checkout_as_refused_until_it_listens_again() {
    let s = setup("refuse", Faults::none()).await;
    s.proxy.set_refuse(true).unwrap();
    faults::assert_refused(s.pool.get().await);
    assert_eq!(
        s.pool.stats().resets(ResetCause::Refused, Phase::Connect),
        1
    );
    s.proxy.set_refuse(false).unwrap();
    let mut conn = s.pool.get().await.unwrap();
    assert_eq!(request(&mut conn, "PING").await.unwrap(), "PONG");
}

#[tokio::test]
async fn a_hung_path_fails_the_checkout_ping_and_the_connection_is_replaced() {
    let server = LineServer::start().await.unwrap();
    let proxy = ChaosProxy::start(server.addr()).await.unwrap();
    let manager = LineManager::new(proxy.local_addr());
    let pool = Pool::builder(manager)
        .name("hung")
        .reaper_interval(TICK)
        .check_after(Duration::from_millis(100))
        .ping_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    open_idle(&pool, 1).await;
    proxy.set_black_hole(true);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The idle connection's ping goes unanswered; a new connection takes its place.
    let conn = pool.get().await.unwrap();
    assert_eq!(
        pool.stats().resets(ResetCause::PingFailed, Phase::Checkout),
        1
    );
    assert_eq!(pool.manager().connects(), 2);
    drop(conn);
    proxy.set_black_hole(false);
    let mut conn = pool.get().await.unwrap();
    assert_eq!(request(&mut conn, "PING").await.unwrap(), "PONG");
}

#[tokio::test]
async fn resets_the_application_sees_add_up_to_the_resets_injected() {
    let s = setup(
        "random-resets",
        Faults {
            reset_probability: 0.05,
            ..Faults::none()
        },
    )
    .await;
    let mut failed = 0u64;
    for i in 0..300 {
        let mut conn = s.pool.get().await.unwrap();
        match request(&mut conn, &format!("SET k{i} v")).await {
            Ok(reply) => assert_eq!(reply, "OK"),
            Err(e) => {
                let Disposition::Broken { cause, .. } = e.classify() else {
                    panic!("a reset is a broken connection: {e}");
                };
                assert_eq!(cause, ResetCause::PeerReset, "{e}");
                conn.mark_broken(cause);
                failed += 1;
            }
        }
    }
    assert!(failed > 0, "no resets in 300 requests at 5%");
    // The proxy counts a reset just after sending it.
    wait_for_stats(&s.proxy, |st| st.reset_random == failed).await;
    assert_eq!(
        s.pool.stats().resets(ResetCause::PeerReset, Phase::InUse),
        failed
    );
    assert_eq!(s.pool.stats().all_resets(), failed);
    assert!(no_close_wait(s.proxy.local_addr().port()).await);
}

#[tokio::test]
async fn connections_beyond_the_upstreams_limit_are_reset_and_counted() {
    let s = setup(
        "capped",
        Faults {
            max_connections: Some(2),
            ..Faults::none()
        },
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = s.pool.get().await.unwrap();
        assert_eq!(request(&mut conn, "PING").await.unwrap(), "PONG");
        held.push(conn);
    }
    // The third connection is reset as soon as the proxy takes it: the connect or
    // the first request reports it.
    let cause = match s.pool.get().await {
        Err(e) => e.cause(),
        Ok(mut conn) => match request(&mut conn, "PING").await {
            Err(e) => match e.classify() {
                Disposition::Broken { cause, .. } => {
                    conn.mark_broken(cause);
                    Some(cause)
                }
                other => panic!("{e}: {other:?}"),
            },
            Ok(reply) => panic!("the connection over the limit answered {reply}"),
        },
    };
    assert!(
        matches!(
            cause,
            Some(ResetCause::PeerReset | ResetCause::PeerClosed | ResetCause::BrokenPipe)
        ),
        "{cause:?}"
    );
    assert_eq!(s.proxy.stats().over_capacity, 1);
}
