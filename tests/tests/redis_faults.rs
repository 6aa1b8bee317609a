//! Redis closing the pool's connections under load, against a real redis-server:
//! `CLIENT KILL TYPE normal` while tasks run commands, and the server's own idle
//! timeout (`timeout 1`) under a workload with idle gaps. Commands go through
//! `run_idempotent` (a `SET` to a fixed value, a `GET`): no error may reach the
//! application, every closed connection is counted once with its cause, and no
//! socket of this process is left in `CLOSE_WAIT` (as the kernel reports it). Without
//! redis-server installed these tests say SKIPPED.

use std::time::{Duration, Instant};

use redis::AsyncConnectionConfig;
use steadypool::drivers::redis::{RedisDriverError, RedisManager};
use steadypool::metrics::RetryOutcome;
use steadypool::{Phase, Pool, ResetCause, RetryPolicy, RunError, Stats};
use steadypool_tests::faults::{self, Allowed, SLACK};
use steadypool_tests::load::Load;
use steadypool_tests::recorded::Books;
use steadypool_tests::redis::RedisServer;

fn pool_for(server: &RedisServer, name: &str, size: usize) -> Pool<RedisManager> {
    // A reply slower than redis's default 500 ms is no fault of the server's here,
    // only of a loaded test machine.
    let manager = RedisManager::new(server.url()).unwrap().connection_config(
        AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10))),
    );
    faults::watched(manager, name, size)
        .retry_policy(
            RetryPolicy::default()
                .max_attempts(10)
                .deadline(Duration::from_secs(20))
                .backoff(Duration::from_millis(10), Duration::from_millis(200)),
        )
        .build()
        .unwrap()
}

/// Sets key `n % 64` to `n`'s value, then reads it back; both are safe to run twice.
async fn set_and_get(pool: &Pool<RedisManager>, n: u64) -> Result<(), RunError<RedisDriverError>> {
    let key = format!("key:{}", n % 64);
    let value = format!("value:{n}");
    let got: String = pool
        .run_idempotent(async move |conn| {
            let key = key.clone();
            let value = value.clone();

            redis::cmd("SET")
                .arg(&key)
                .arg(&value)
                .query_async::<()>(&mut *conn)
                .await?;
            Ok(redis::cmd("GET").arg(&key).query_async(&mut *conn).await?)
        })
        .await?;
    assert!(got.starts_with("value:"), "{got}");
    Ok(())
}

/// Resets counted for `cause` while idle or at checkout: found before any command.
fn found_unused(stats: &Stats, cause: ResetCause) -> u64 {
    stats.resets(cause, Phase::Idle) + stats.resets(cause, Phase::Checkout)
}

/// A close found before any command.
const FOUND_UNUSED: [Allowed; 2] = [
    Allowed::in_phase(ResetCause::PeerClosed, Phase::Idle),
    Allowed::in_phase(ResetCause::PeerClosed, Phase::Checkout),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_mid_load_reaches_no_command() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let pool = pool_for(&server, "redis-kill", 8);
    let load = {
        let pool = pool.clone();
        Load::start(12, move |worker, n| {
            let pool = pool.clone();
            async move {
                let result = set_and_get(&pool, n).await;
                // Pauses of varying length leave some connections idle at any moment.
                let pause = (n.wrapping_mul(7919) + worker as u64) % 20;
                tokio::time::sleep(Duration::from_millis(pause)).await;
                result
            }
        })
    };
    let mut admin = server.connect().await;
    let mut killed = 0;
    for _ in 0..3 {
        assert!(load.until_succeeded(100, SLACK).await, "the load stalled");
        let n: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .query_async(&mut admin)
            .await
            .unwrap();
        killed += n as u64;
    }
    assert!(load.until_succeeded(100, SLACK).await, "the load stalled");
    faults::stop_without_failures(load, &pool, "CLIENT KILL mid-load").await;
    eprintln!("CLIENT KILL mid-load: {killed} connections killed");
    assert!(killed > 0);
    drop(admin);
    // A killed connection is found by the reaper, at checkout, or by the command on it.
    assert!(
        steadypool_tests::eventually(SLACK, || pool.stats().all_resets() == killed).await,
        "{killed} killed, counted {:?}",
        pool.stats().reset_table()
    );
    // Every reset is a close found before use, or a close or reset that struck a
    // command in flight (the server killed a connection a command was on).
    faults::assert_resets_only(
        &pool.stats(),
        "CLIENT KILL mid-load",
        &[
            FOUND_UNUSED[0],
            FOUND_UNUSED[1],
            Allowed::in_phase(ResetCause::PeerClosed, Phase::InUse),
            Allowed::in_phase(ResetCause::PeerReset, Phase::InUse),
            Allowed::in_phase(ResetCause::BrokenPipe, Phase::InUse),
        ],
    );
    assert!(found_unused(&pool.stats(), ResetCause::PeerClosed) >= 1);
    assert_eq!(pool.stats().retries(RetryOutcome::GaveUp), 0);
    faults::assert_settled(&pool, server.port()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_idle_timeout_under_load_with_gaps_reaches_no_command() {
    let Some(server) = RedisServer::start() else {
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
    drop(admin);
    let pool = pool_for(&server, "redis-timeout", 4);
    // Cycles of one second of commands and three of silence, each worker a little out
    // of step with the others: every cycle the server closes the connections that
    // went quiet, and the next commands must not notice.
    const CYCLE_MS: u128 = 4_000;
    const BUSY_MS: u128 = 1_000;
    let started = Instant::now();
    let load = {
        let pool = pool.clone();
        Load::start(4, move |worker, n| {
            let pool = pool.clone();
            async move {
                let offset = worker as u128 * 100;
                let at = (started.elapsed().as_millis() + CYCLE_MS - offset) % CYCLE_MS;
                if at >= BUSY_MS {
                    let quiet = (CYCLE_MS - at) as u64;
                    tokio::time::sleep(Duration::from_millis(quiet)).await;
                }
                set_and_get(&pool, n).await
            }
        })
    };
    let cycles = 3;
    tokio::time::sleep(Duration::from_millis((CYCLE_MS * cycles) as u64 + 500)).await;
    faults::stop_without_failures(load, &pool, "server idle timeout").await;
    assert!(
        found_unused(&pool.stats(), ResetCause::PeerClosed) >= cycles as u64,
        "the server's idle closes were not all seen: {:?}",
        pool.stats().reset_table()
    );
    faults::assert_resets_only(
        &pool.stats(),
        "only closes found idle or at checkout",
        &FOUND_UNUSED,
    );
    assert_eq!(
        pool.stats().retries(RetryOutcome::Succeeded),
        0,
        "nothing to retry"
    );
    faults::assert_settled(&pool, server.port()).await;
}
