//! The retry rules, one by one, against a real server on loopback: a stale pooled
//! connection is replaced at once, transient errors back off on the same connection,
//! application errors come back untouched, and panics, cancellations and deadlines
//! never leave a half-used connection in the pool. Each run counts once in
//! `runs_total`, with what its caller got. The runs that give up (attempts, deadline,
//! closed pool) are rows of the table in `run_outcomes.rs`.

use std::time::Duration;

use steadypool::metrics::{RetryOutcome, RunOutcome};
use steadypool::{AttemptError, GiveUp, ResetCause, RetryPolicy, RunError};
use steadypool_tests::flaky::{self, Faults, LedgerError};
use steadypool_tests::ledger::{self, Counted, ledger_pool};

fn policy() -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(4)
        .deadline(Duration::from_secs(10))
        .backoff(Duration::from_millis(5), Duration::from_millis(50))
}

/// A stale pooled connection that the probe could not see (the server resets it as
/// the request arrives) is replaced at once. The backoff base is far beyond the
/// deadline, so any wait before the retry would have ended the run with
/// `GiveUp::Deadline`: success proves the retry did not sleep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_pooled_connection_is_replaced_without_sleeping() {
    let (server, pool) = ledger_pool(Faults::requests_per_connection(1), |b| {
        b.max_size(1)
            .check_after(Duration::from_secs(3600))
            .connect_timeout(Duration::from_secs(1))
            .retry_policy(
                RetryPolicy::default()
                    .max_attempts(3)
                    .deadline(Duration::from_secs(5))
                    .backoff(Duration::from_secs(60), Duration::from_secs(120)),
            )
    })
    .await;

    let first = pool
        .run_idempotent(async |conn| flaky::run(conn, 1).await)
        .await
        .unwrap();
    assert_eq!(first, 1);
    assert_eq!(
        pool.status().idle,
        1,
        "the connection went back to the pool"
    );

    let second = pool
        .run_idempotent(async |conn| flaky::run(conn, 2).await)
        .await;
    assert_eq!(second.unwrap(), 1, "ran once, on a fresh connection");
    assert_eq!(server.accepted(), 2);
    assert_eq!(server.resets(), 1);
    ledger::assert_counted(
        &pool.stats(),
        "a stale connection replaced",
        &Counted {
            runs: &[(RunOutcome::Ok, 2)],
            retries: &[(None, RetryOutcome::Succeeded, 1)],
        },
    );
}

/// The same stale connection under a non-idempotent operation: the request may have
/// reached the server, so it is not replayed; the error says it may have taken
/// effect, and names the cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_connection_under_a_non_idempotent_operation_is_not_replayed() {
    let (server, pool) = ledger_pool(Faults::requests_per_connection(1), |b| {
        b.max_size(1)
            .check_after(Duration::from_secs(3600))
            .retry_policy(policy())
    })
    .await;
    pool.run(async |conn| flaky::run(conn, 1).await)
        .await
        .unwrap();
    let err = pool
        .run(async |conn| flaky::run(conn, 2).await)
        .await
        .unwrap_err();
    let RunError::MaybeExecuted {
        reason: GiveUp::NotIdempotent,
        attempts,
        cause: Some(cause),
        source: Some(AttemptError::Operation(LedgerError::Receive(_))),
    } = &err
    else {
        panic!("expected MaybeExecuted after a reply that never came, got {err:?}");
    };
    assert!(
        matches!(cause, ResetCause::PeerReset | ResetCause::PeerClosed),
        "{cause}"
    );
    assert_eq!(*attempts, 1);
    assert!(err.may_have_executed());
    assert_eq!(err.cause(), Some(*cause));
    assert!(err.to_string().contains(cause.as_str()), "{err}");
    assert!(err.to_string().contains("may have taken effect"), "{err}");
    assert_eq!(server.runs(2), 0);
    assert_eq!(server.requests(), 2, "no second attempt reached the server");
    ledger::assert_counted(
        &pool.stats(),
        "a stale connection under a non-idempotent run",
        &Counted {
            runs: &[(RunOutcome::MaybeExecuted, 1), (RunOutcome::Ok, 1)],
            retries: &[(Some(*cause), RetryOutcome::NotSafe, 1)],
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_errors_back_off_and_keep_the_connection() {
    let (server, pool) = ledger_pool(Faults::busy_first(2), |b| b.retry_policy(policy())).await;
    // Not idempotent, yet retried: BUSY means the server did not run it.
    let runs = pool
        .run(async |conn| flaky::run(conn, 7).await)
        .await
        .unwrap();
    assert_eq!(runs, 1);
    assert_eq!(server.busy_sent(), 2);
    assert_eq!(server.accepted(), 1, "the connection was kept throughout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_errors_come_back_at_once_and_the_connection_stays() {
    let (server, pool) = ledger_pool(Faults::default(), |b| b.retry_policy(policy())).await;
    let err = pool
        .run_idempotent(async |conn| flaky::fail(conn, 3).await)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RunError::Operation(LedgerError::Refused(3))),
        "{err:?}"
    );
    assert_eq!(err.cause(), None);
    assert_eq!(err.reason(), None);
    assert!(
        !err.may_have_executed(),
        "the server answered: nothing is uncertain"
    );
    assert_eq!(server.requests(), 1);
    let status = pool.status();
    assert_eq!((status.idle, status.in_use), (1, 0));
    ledger::assert_counted(
        &pool.stats(),
        "an application error",
        &Counted::runs(&[(RunOutcome::OperationError, 1)]),
    );
}

/// A panicking operation: the panic reaches the caller (here through the spawned
/// task), the connection is discarded rather than returned half-used, and the pool
/// goes on working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_operation_discards_its_connection_and_the_pool_stays_consistent() {
    let (server, pool) =
        ledger_pool(Faults::default(), |b| b.max_size(2).retry_policy(policy())).await;
    let panicking = pool.clone();
    let joined = tokio::spawn(async move {
        panicking
            .run_idempotent::<(), _>(async |conn| {
                flaky::run(conn, 1).await?;
                panic!("operation failed in an unexpected way");
            })
            .await
    })
    .await;
    assert!(joined.unwrap_err().is_panic());
    let status = pool.status();
    assert_eq!(
        (status.size, status.idle, status.in_use),
        (0, 0, 0),
        "{status:?}"
    );
    assert_eq!(
        pool.run_idempotent(async |conn| flaky::run(conn, 2).await)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        server.accepted(),
        2,
        "the panicked connection was not reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_dropped_half_way_discards_its_connection_and_counts_nothing() {
    let (_server, pool) = ledger_pool(Faults::default(), |b| b.retry_policy(policy())).await;
    let run = pool.run(async |conn| flaky::hang(conn, 1).await);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), run)
            .await
            .is_err()
    );
    let status = pool.status();
    assert_eq!((status.size, status.in_use), (0, 0), "{status:?}");
    // Its caller got no outcome, so there is none to count.
    ledger::assert_counted(&pool.stats(), "a dropped run", &Counted::default());
}
