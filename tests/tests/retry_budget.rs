//! The retry budget: with the upstream hard down, retries stay within
//! `ratio x requests + floor` instead of multiplying the load by `max_attempts`
//! (golang/go#52886), and each request turned away is counted.

use std::time::Duration;

use steadypool::metrics::{RETRIES, RUNS};
use steadypool::{GiveUp, Pool, RetryPolicy, RunError};
use steadypool_tests::flaky::{self, Faults, LedgerManager, LedgerServer, ResetPoint};
use steadypool_tests::ledger::ledger_pool_recorded;

const REQUESTS: usize = 200;
const RATIO: f64 = 0.2;
const FLOOR: u32 = 10;

fn policy() -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(5)
        .backoff(Duration::from_millis(1), Duration::from_millis(4))
        .budget(RATIO, FLOOR)
}

fn allowed_retries() -> usize {
    (RATIO * REQUESTS as f64) as usize + FLOOR as usize
}

/// Every request reaches a server that resets it before running it: connects work,
/// every attempt fails. Each attempt is one request line at the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_within_budget_when_every_request_is_reset() {
    let (server, pool, metrics) = ledger_pool_recorded(Faults::reset_at(ResetPoint::Before), |b| {
        b.name("budget").retry_policy(policy())
    })
    .await;

    let mut budget_spent = 0;
    for id in 0..REQUESTS as u64 {
        let err = pool
            .run_idempotent(async |conn| flaky::run(conn, id).await)
            .await
            .unwrap_err();
        assert!(err.cause().is_some(), "{err}");
        // Every attempt sent its request before the reset.
        assert!(err.may_have_executed(), "{err}");
        if matches!(
            err,
            RunError::MaybeExecuted {
                reason: GiveUp::Budget,
                ..
            }
        ) {
            budget_spent += 1;
        }
    }
    let retries = server.requests() - REQUESTS;
    eprintln!(
        "{REQUESTS} requests, upstream resetting all: {retries} retries (budget {}), \
         {budget_spent} turned away; without a budget: {}",
        allowed_retries(),
        REQUESTS * 4
    );
    assert!(retries <= allowed_retries(), "{retries} retries");
    assert!(retries >= FLOOR as usize, "the budget was used: {retries}");
    assert!(budget_spent > REQUESTS / 2, "{budget_spent}");
    assert_eq!(
        metrics.counter(RETRIES, &[("outcome", "budget_spent")]),
        budget_spent as u64
    );
    assert_eq!(
        metrics.counter(RUNS, &[("outcome", "maybe_executed")]),
        REQUESTS as u64
    );
    assert_eq!(metrics.counter(RUNS, &[]), REQUESTS as u64);
}

/// The listener is gone: every connect is refused. With the circuit switched off, only
/// the budget limits how many connects the retries make.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_within_budget_when_connects_are_refused() {
    let server = LedgerServer::start(Faults::default()).await.unwrap();
    let addr = server.addr();
    server.stop().await;
    let manager = LedgerManager::new(addr);
    let pool = Pool::builder(manager.clone())
        .circuit_open_after(u32::MAX)
        .retry_policy(policy())
        .build()
        .unwrap();
    for id in 0..REQUESTS as u64 {
        let err = pool
            .run(async |conn| flaky::run(conn, id).await)
            .await
            .unwrap_err();
        assert_eq!(err.cause(), Some(steadypool::ResetCause::Refused), "{err}");
        assert!(
            matches!(
                err,
                RunError::NotExecuted {
                    reason: GiveUp::Attempts | GiveUp::Budget,
                    ..
                }
            ),
            "{err:?}"
        );
    }
    let retries = manager.connects().len() - REQUESTS;
    eprintln!(
        "{REQUESTS} requests, upstream refusing: {retries} retried connects (budget {})",
        allowed_retries()
    );
    assert!(retries <= allowed_retries(), "{retries} retries");
    assert!(retries >= FLOOR as usize, "{retries}");
}
