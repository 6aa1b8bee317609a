//! What a caller learns when `run` fails: whether the request may have taken effect.
//!
//! Once an attempt may have sent the request, every way the run ends is
//! `RunError::MaybeExecuted`, whatever stopped it (the deadline, the attempts, a closed
//! pool); only runs whose every attempt failed before sending are
//! `RunError::NotExecuted`. Each run counts once in `steadypool_runs_total`, callers
//! turned away by the open circuit included. Against real servers on loopback.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use steadypool::metrics::{RetryOutcome, RunOutcome};
use steadypool::{AttemptError, Error, GiveUp, ResetCause, RetryPolicy, RunError};
use steadypool_tests::eventually;
use steadypool_tests::flaky::{self, Faults, LedgerError, ResetPoint};
use steadypool_tests::ledger::{Counted, GaveUpAs, assert_gave_up, ledger_pool};
use tokio::io::AsyncWriteExt;

fn fast_backoff() -> RetryPolicy {
    RetryPolicy::default().backoff(Duration::from_millis(5), Duration::from_millis(50))
}

/// A server that runs a request and never replies. The client cannot know whether it
/// ran: when the deadline cuts the non-idempotent run, the error must say that it may
/// have taken effect (it did, once), not merely that the run gave up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_ran_but_was_never_answered_may_have_taken_effect() {
    let (server, pool, metrics) = ledger_pool(Faults::never_reply(), |b| {
        b.connect_timeout(Duration::from_millis(500)).retry_policy(
            RetryPolicy::default()
                .max_attempts(3)
                .deadline(Duration::from_secs(1)),
        )
    })
    .await;
    let err = pool
        .run(async |conn| flaky::run(conn, 1).await)
        .await
        .unwrap_err();
    assert_gave_up(
        &err,
        &GaveUpAs {
            may_have_executed: true,
            reason: GiveUp::Deadline,
            attempts: 1,
            cause: None,
            source: |s| s.is_none(),
        },
    );
    assert!(
        eventually(Duration::from_secs(5), || server.runs(1) >= 1).await,
        "the server never ran the request"
    );
    assert_eq!(server.runs(1), 1, "ran once");
    assert_eq!(server.requests(), 1, "not replayed");
    assert_eq!(pool.status().size, 0, "the cut connection was discarded");
    metrics.assert_counted(
        "never answered",
        &Counted::runs(&[(RunOutcome::MaybeExecuted, 1)]),
    );
}

/// An idempotent run whose first attempt broke after the server ran the request, and
/// whose second attempt could not connect: the attempts ran out on a failed connect,
/// but the first attempt may have taken effect, and did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connect_after_an_attempt_that_may_have_run_still_may_have_taken_effect() {
    let (server, pool, metrics) = ledger_pool(Faults::reset_at(ResetPoint::During), |b| {
        b.circuit_open_after(10)
            .retry_policy(fast_backoff().max_attempts(2))
    })
    .await;
    let server = Arc::new(server);
    let err = pool
        .run_idempotent(async |conn| {
            let server = Arc::clone(&server);

            let ran = flaky::run(conn, 1).await;
            // Down before the next attempt: its connect is refused.
            server.stop().await;
            ran
        })
        .await
        .unwrap_err();
    assert_gave_up(
        &err,
        &GaveUpAs {
            may_have_executed: true,
            reason: GiveUp::Attempts,
            attempts: 2,
            cause: Some(ResetCause::Refused),
            source: |s| matches!(s, Some(AttemptError::Checkout(Error::Connect { .. }))),
        },
    );
    assert_eq!(server.runs(1), 1);
    metrics.assert_counted(
        "a failed connect after an attempt that may have run",
        &Counted {
            runs: &[(RunOutcome::MaybeExecuted, 1)],
            retries: &[(Some(ResetCause::Refused), RetryOutcome::GaveUp, 1)],
        },
    );
}

/// The same after an attempt that may have run, when the pool is closed before the
/// next one: no connection, but not "not executed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_closed_after_an_attempt_that_may_have_run_still_may_have_taken_effect() {
    let (server, pool, metrics) = ledger_pool(Faults::reset_at(ResetPoint::During), |b| {
        b.retry_policy(fast_backoff())
    })
    .await;
    let closing = pool.clone();
    let err = pool
        .run_idempotent(async |conn| {
            let closing = closing.clone();

            let ran = flaky::run(conn, 1).await;
            closing.close();
            ran
        })
        .await
        .unwrap_err();
    assert_gave_up(
        &err,
        &GaveUpAs {
            may_have_executed: true,
            reason: GiveUp::NoConnection,
            attempts: 2,
            cause: None,
            source: |s| matches!(s, Some(AttemptError::Checkout(Error::Closed))),
        },
    );
    assert_eq!(server.runs(1), 1);
    metrics.assert_counted(
        "closed after an attempt that may have run",
        &Counted {
            runs: &[(RunOutcome::MaybeExecuted, 1)],
            retries: &[(None, RetryOutcome::GaveUp, 1)],
        },
    );
}

/// Every connect refused: no attempt sent anything, so the run provably did not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_refused_at_every_connect_did_not_reach_the_server() {
    let (server, pool, metrics) = ledger_pool(Faults::default(), |b| {
        b.circuit_open_after(10)
            .retry_policy(fast_backoff().max_attempts(3))
    })
    .await;
    server.stop().await;
    let err = pool
        .run(async |conn| flaky::run(conn, 1).await)
        .await
        .unwrap_err();
    assert_gave_up(
        &err,
        &GaveUpAs {
            may_have_executed: false,
            reason: GiveUp::Attempts,
            attempts: 3,
            cause: Some(ResetCause::Refused),
            source: |s| matches!(s, Some(AttemptError::Checkout(Error::Connect { .. }))),
        },
    );
    metrics.assert_counted(
        "refused at every connect",
        &Counted {
            runs: &[(RunOutcome::NotExecuted, 1)],
            retries: &[(Some(ResetCause::Refused), RetryOutcome::GaveUp, 1)],
        },
    );
}

/// A non-idempotent run whose first attempt failed with an error the manager
/// classifies as never sent (`Sent::No`: writing the request failed on a socket whose
/// sending side was already shut) is retried, and the retry succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_retries_an_error_that_says_nothing_was_sent() {
    let (server, pool, metrics) =
        ledger_pool(Faults::default(), |b| b.retry_policy(fast_backoff())).await;
    let attempts = AtomicUsize::new(0);
    let runs = pool
        .run(async |conn| {
            let first = attempts.fetch_add(1, Ordering::SeqCst) == 0;

            if first {
                conn.get_mut().shutdown().await.map_err(LedgerError::Send)?;
            }
            flaky::run(conn, 1).await
        })
        .await
        .unwrap();
    assert_eq!(runs, 1);
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(server.runs(1), 1);
    assert_eq!(server.accepted(), 2, "the broken connection was replaced");
    // The write fails on the socket shut for sending (EPIPE), or on the server's RST
    // when its answer to the shutdown came first.
    let retried_after = |cause| metrics.retries_with_cause(cause, RetryOutcome::Succeeded);
    assert_eq!(
        retried_after(ResetCause::BrokenPipe) + retried_after(ResetCause::PeerReset),
        1
    );
    metrics.assert_counted(
        "a write on a shut socket",
        &Counted {
            runs: &[(RunOutcome::Ok, 1)],
            retries: &[(None, RetryOutcome::Succeeded, 1)],
        },
    );
}

/// A transient refusal is retried after a real wait: the second attempt starts no
/// sooner than the backoff base after the first (the first wait is drawn from
/// `[base, 2 x base)`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_error_waits_at_least_the_backoff_base() {
    let base = Duration::from_millis(300);
    let (server, pool, metrics) = ledger_pool(Faults::busy_first(1), |b| {
        b.retry_policy(
            RetryPolicy::default()
                .max_attempts(2)
                .backoff(base, base * 4)
                .jitter_seed(3),
        )
    })
    .await;
    let starts = Mutex::new(Vec::new());
    let runs = pool
        .run(async |conn| {
            starts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Instant::now());
            flaky::run(conn, 1).await
        })
        .await
        .unwrap();
    assert_eq!(runs, 1);
    let starts = starts.into_inner().unwrap_or_else(PoisonError::into_inner);
    assert_eq!(starts.len(), 2);
    let waited = starts[1] - starts[0];
    assert!(
        waited >= base,
        "the retry came {waited:?} after the first try"
    );
    assert_eq!(server.busy_sent(), 1);
    metrics.assert_counted(
        "a transient error",
        &Counted {
            runs: &[(RunOutcome::Ok, 1)],
            retries: &[(Some(ResetCause::Other), RetryOutcome::Succeeded, 1)],
        },
    );
}

/// A wait that would end past the deadline is not started: the run ends at once with
/// `GiveUp::Deadline`, long before the backoff could have ended. BUSY means the server
/// did not run it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_wait_is_started_past_the_deadline() {
    let (server, pool, metrics) = ledger_pool(Faults::busy_first(1), |b| {
        b.retry_policy(
            RetryPolicy::default()
                .deadline(Duration::from_secs(10))
                .backoff(Duration::from_secs(120), Duration::from_secs(240)),
        )
    })
    .await;
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        pool.run(async |conn| flaky::run(conn, 1).await),
    )
    .await
    .expect("the run slept a backoff that could only end past its deadline")
    .unwrap_err();
    assert_gave_up(
        &err,
        &GaveUpAs {
            may_have_executed: false,
            reason: GiveUp::Deadline,
            attempts: 1,
            cause: None,
            source: |s| matches!(s, Some(AttemptError::Operation(LedgerError::Busy))),
        },
    );
    assert_eq!(server.requests(), 1);
    assert_eq!(server.runs(1), 0);
    metrics.assert_counted(
        "no wait past the deadline",
        &Counted {
            runs: &[(RunOutcome::NotExecuted, 1)],
            retries: &[(Some(ResetCause::Other), RetryOutcome::GaveUp, 1)],
        },
    );
}

/// An outage: the first callers' connects are refused, which opens the circuit; the
/// callers after them are turned away without dialing. Only the first ones hit a
/// failure worth a retry (`retries_total`), but every caller that got an error is in
/// `runs_total`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_turned_away_by_the_open_circuit_are_counted() {
    const CALLERS: u64 = 6;
    let (server, pool, metrics) = ledger_pool(Faults::default(), |b| {
        b.circuit_open_after(2)
            .circuit_open_for(Duration::from_secs(60))
            .retry_policy(RetryPolicy::default().max_attempts(1))
    })
    .await;
    server.stop().await;
    let mut turned_away = 0;
    for id in 0..CALLERS {
        let err = pool
            .run(async |conn| flaky::run(conn, id).await)
            .await
            .unwrap_err();
        assert!(!err.may_have_executed(), "{err:?}");
        if matches!(
            err,
            RunError::NotExecuted {
                reason: GiveUp::NoConnection,
                source: Some(AttemptError::Checkout(Error::CircuitOpen { .. })),
                ..
            }
        ) {
            turned_away += 1;
        }
    }
    assert_eq!(turned_away, CALLERS - 2);
    metrics.assert_counted(
        "callers turned away",
        &Counted {
            runs: &[(RunOutcome::NotExecuted, CALLERS)],
            retries: &[(Some(ResetCause::Refused), RetryOutcome::GaveUp, 2)],
        },
    );
}
