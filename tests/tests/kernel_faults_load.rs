//! Kernel-level resets under load, each test in a private network namespace (see
//! `steadypool_tests::netns`): established connections destroyed with `ss -K`, and an
//! iptables rule answering every packet to the server with a TCP reset, both while
//! tasks run idempotent requests. The resets must be counted as `peer_reset`, every
//! request must be retried to success, and afterwards no socket of this process may
//! sit in `CLOSE_WAIT` (as the kernel reports it). Without root, iptables, ip, ss or
//! unshare these tests say SKIPPED.

use std::io;
use std::time::Duration;

use steadypool::metrics::RetryOutcome;
use steadypool::{Phase, Pool, ResetCause, RunError};
use steadypool_tests::eventually;
use steadypool_tests::faults::{self, Allowed, SLACK};
use steadypool_tests::line_manager::{LineManager, request};
use steadypool_tests::load::Load;
use steadypool_tests::netns;
use steadypool_tests::recorded::Books;
use steadypool_tests::servers::LineServer;

fn pool_for(server: &LineServer, name: &str) -> Pool<LineManager> {
    faults::watched(LineManager::new(server.addr()), name, 8)
        .connect_timeout(Duration::from_secs(2))
        // While the firewall resets every packet, connects fail too; the open
        // circuit would fail requests fast on purpose, and this test asks for none
        // to fail, so it stays closed.
        .circuit_open_after(u32::MAX)
        .retry_policy(faults::ride_out_an_outage())
        .build()
        .unwrap()
}

/// A `SET` to a fixed value: safe to run twice.
async fn set(pool: &Pool<LineManager>, n: u64) -> Result<(), RunError<io::Error>> {
    let line = format!("SET key{} fixed", n % 32);
    let reply = pool
        .run_idempotent(async move |conn| {
            let line = line.clone();
            request(conn, &line).await
        })
        .await?;
    assert_eq!(reply, "OK");
    Ok(())
}

fn start_load(pool: &Pool<LineManager>) -> Load {
    let pool = pool.clone();
    Load::start(12, move |worker, n| {
        let pool = pool.clone();
        async move {
            let result = set(&pool, n).await;
            // Pauses of varying length leave some connections idle at any moment.
            let pause = (n.wrapping_mul(7919) + worker as u64) % 10;
            tokio::time::sleep(Duration::from_millis(pause)).await;
            result
        }
    })
}

#[test]
fn killed_sockets_mid_load_are_peer_reset_and_retried() {
    let Some(ns) = netns::isolate("killed_sockets_mid_load_are_peer_reset_and_retried") else {
        return;
    };
    netns::runtime().block_on(async {
        let server = LineServer::start().await.unwrap();
        let port = server.addr().port();
        let pool = pool_for(&server, "ss-kill-load");
        let load = start_load(&pool);
        assert!(load.until_succeeded(200, SLACK).await, "the load stalled");
        ns.kill_server_sockets(port);
        // Then with requests certainly in flight: the server stops answering on every
        // connection, the pool's connections all fill with waiting requests, and the
        // kill strikes them mid-request.
        assert!(load.until_succeeded(200, SLACK).await, "the load stalled");
        let max_size = pool.status().max_size;
        let deadline = tokio::time::Instant::now() + SLACK;
        loop {
            // Connections opened since the last freeze answer until frozen too.
            server.freeze_all().await;
            let before = load.succeeded();
            tokio::time::sleep(Duration::from_millis(200)).await;
            if load.succeeded() == before && pool.status().in_use == max_size {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "requests kept being answered: {:?}",
                pool.status()
            );
        }
        let in_use_before = pool.stats().resets(ResetCause::PeerReset, Phase::InUse);
        let struck = || pool.stats().resets(ResetCause::PeerReset, Phase::InUse) - in_use_before;
        ns.kill_server_sockets(port);
        eventually(SLACK, || struck() >= max_size as u64).await;
        assert!(load.until_succeeded(200, SLACK).await, "the load stalled");
        let struck_in_flight = struck();
        ns.kill_server_sockets(port);
        assert!(load.until_succeeded(200, SLACK).await, "the load stalled");
        faults::stop_without_failures(load, &pool, "ss -K mid-load").await;
        eprintln!(
            "ss -K mid-load: the kill on a stalled server struck {struck_in_flight} requests \
             in flight"
        );
        assert!(
            pool.stats().resets_with_cause(ResetCause::PeerReset) >= 1,
            "{:?}",
            pool.stats().reset_table()
        );
        // A killed socket is an RST: read as a reset, or, once that was reported, as
        // a broken pipe by a write or end of stream by a read.
        faults::assert_resets_only(
            &pool.stats(),
            "ss -K mid-load",
            &[
                Allowed::any_phase(ResetCause::PeerReset),
                Allowed::any_phase(ResetCause::BrokenPipe),
                Allowed::any_phase(ResetCause::PeerClosed),
            ],
        );
        assert_eq!(
            struck_in_flight, max_size as u64,
            "every request waiting on the stalled server met the reset"
        );
        assert!(pool.stats().retries(RetryOutcome::Succeeded) >= max_size as u64);
        assert_eq!(pool.stats().retries(RetryOutcome::GaveUp), 0);
        faults::assert_settled(&pool, port).await;
    });
}

#[test]
fn a_firewall_reset_mid_load_is_peer_reset_and_retried() {
    let Some(ns) = netns::isolate("a_firewall_reset_mid_load_is_peer_reset_and_retried") else {
        return;
    };
    netns::runtime().block_on(async {
        let server = LineServer::start().await.unwrap();
        let port = server.addr().port();
        let pool = pool_for(&server, "reject-load");
        let load = start_load(&pool);
        for _ in 0..2 {
            assert!(load.until_succeeded(200, SLACK).await, "the load stalled");
            let failed_before = pool.stats().all_resets();
            ns.reject_with_reset(port);
            // Long enough for requests in flight and new connects to meet the rule.
            let struck = eventually(SLACK, || pool.stats().all_resets() > failed_before).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            ns.clear_rules();
            assert!(struck, "no request met the reset");
        }
        assert!(load.until_succeeded(200, SLACK).await, "the load stalled");
        faults::stop_without_failures(load, &pool, "REJECT tcp-reset mid-load").await;
        assert!(
            pool.stats().resets(ResetCause::PeerReset, Phase::InUse) >= 1,
            "{:?}",
            pool.stats().reset_table()
        );
        // A SYN answered with a reset is a refused connect.
        faults::assert_resets_only(
            &pool.stats(),
            "REJECT tcp-reset mid-load",
            &[
                Allowed::any_phase(ResetCause::PeerReset),
                Allowed::any_phase(ResetCause::BrokenPipe),
                Allowed::in_phase(ResetCause::Refused, Phase::Connect),
            ],
        );
        assert!(pool.stats().retries(RetryOutcome::Succeeded) >= 1);
        assert_eq!(pool.stats().retries(RetryOutcome::GaveUp), 0);
        faults::assert_settled(&pool, port).await;
    });
}
