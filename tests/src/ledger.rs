//! The set-up the retry and run tests share: a [`LedgerServer`] with its faults, a
//! pool to it (its metrics recorded for the tests that check the metrics), one
//! assertion for what the pool's books (`Pool::stats`) counted, and one for how a run
//! that gave up reports it.
//!
//! ```no_run
//! # #[tokio::main] async fn main() {
//! use steadypool::metrics::RunOutcome;
//! use steadypool_tests::flaky::{self, Faults};
//! use steadypool_tests::ledger::{self, Counted, ledger_pool};
//!
//! let (server, pool) = ledger_pool(Faults::default(), |b| b).await;
//! pool.run(async |conn| flaky::run(conn, 1).await).await.unwrap();
//! ledger::assert_counted(&pool.stats(), "one run", &Counted::runs(&[(RunOutcome::Ok, 1)]));
//! assert_eq!(server.requests(), 1);
//! # }
//! ```

use std::error::Error as StdError;

use steadypool::metrics::{RETRIES, RUNS, RetryOutcome, RunOutcome};
use steadypool::{AttemptError, GiveUp, Pool, PoolBuilder, ResetCause, RunError, Stats};

use crate::flaky::{Faults, LedgerManager, LedgerServer};
use crate::recorded::{Books, RecordedMetrics};

/// Starts a ledger server with `faults` and builds a pool to it, adjusted by
/// `configure`. Its counts are read from `Pool::stats`.
///
/// # Panics
/// When the server cannot start or the pool refuses its configuration: the test
/// could not run.
pub async fn ledger_pool(
    faults: Faults,
    configure: impl FnOnce(PoolBuilder<LedgerManager>) -> PoolBuilder<LedgerManager>,
) -> (LedgerServer, Pool<LedgerManager>) {
    let server = start(faults).await;
    let builder = configure(Pool::builder(LedgerManager::new(server.addr())));
    match builder.build() {
        Ok(pool) => (server, pool),
        Err(e) => panic!("the pool refused its configuration: {e}"),
    }
}

/// As [`ledger_pool`], with the pool's metrics recorded, for a test that checks the
/// metrics themselves.
///
/// # Panics
/// As [`ledger_pool`].
pub async fn ledger_pool_recorded(
    faults: Faults,
    configure: impl FnOnce(PoolBuilder<LedgerManager>) -> PoolBuilder<LedgerManager>,
) -> (LedgerServer, Pool<LedgerManager>, RecordedMetrics) {
    let server = start(faults).await;
    let builder = configure(Pool::builder(LedgerManager::new(server.addr())));
    match RecordedMetrics::build(builder) {
        Ok((pool, metrics)) => (server, pool, metrics),
        Err(e) => panic!("the pool refused its configuration: {e}"),
    }
}

async fn start(faults: Faults) -> LedgerServer {
    match LedgerServer::start(faults).await {
        Ok(server) => server,
        Err(e) => panic!("the ledger server did not start: {e}"),
    }
}

/// Every `run` and every weighed retry a test expects its pool to have counted. What
/// is not listed must not have been counted: the totals are checked too.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counted<'a> {
    /// `run` calls by what their caller got.
    pub runs: &'a [(RunOutcome, u64)],
    /// Failures weighed for a retry, by cause (`None`: whatever the cause) and by
    /// what became of them.
    pub retries: &'a [(Option<ResetCause>, RetryOutcome, u64)],
}

impl<'a> Counted<'a> {
    /// Runs only: no failure was weighed for a retry.
    pub const fn runs(runs: &'a [(RunOutcome, u64)]) -> Counted<'a> {
        Counted { runs, retries: &[] }
    }
}

/// Checks that a pool's books (`stats`, from `Pool::stats`) counted exactly
/// `expected`; a failure names `what` and the count that differs.
///
/// # Panics
/// When a count differs.
pub fn assert_counted(stats: &Stats, what: &str, expected: &Counted<'_>) {
    for &(outcome, n) in expected.runs {
        assert_eq!(
            stats.runs(outcome),
            n,
            "{what}: runs with outcome {outcome:?}"
        );
    }
    let runs: u64 = expected.runs.iter().map(|(_, n)| n).sum();
    assert_eq!(stats.all_runs(), runs, "{what}: runs in all");
    for &(cause, outcome, n) in expected.retries {
        let counted = match cause {
            Some(cause) => stats.retries_by_cause(cause, outcome),
            None => stats.retries(outcome),
        };
        assert_eq!(
            counted, n,
            "{what}: retries after {cause:?} that ended {outcome:?}"
        );
    }
    let retries: u64 = expected.retries.iter().map(|(.., n)| n).sum();
    assert_eq!(stats.all_retries(), retries, "{what}: retries in all");
}

/// Checks that the pool's metrics count the same runs and retries as `expected`
/// (what [`assert_counted`] checks in its books), totals included.
///
/// # Panics
/// When a counter differs.
pub fn assert_metrics_counted(metrics: &RecordedMetrics, what: &str, expected: &Counted<'_>) {
    for &(outcome, n) in expected.runs {
        assert_eq!(
            metrics.counter(RUNS, &[("outcome", outcome.as_str())]),
            n,
            "{what}: the metrics' runs with outcome {outcome:?}"
        );
    }
    let runs: u64 = expected.runs.iter().map(|(_, n)| n).sum();
    assert_eq!(
        metrics.counter(RUNS, &[]),
        runs,
        "{what}: the metrics' runs in all"
    );
    for &(cause, outcome, n) in expected.retries {
        let counted = match cause {
            Some(cause) => metrics.counter(
                RETRIES,
                &[("cause", cause.as_str()), ("outcome", outcome.as_str())],
            ),
            None => metrics.counter(RETRIES, &[("outcome", outcome.as_str())]),
        };
        assert_eq!(
            counted, n,
            "{what}: the metrics' retries after {cause:?} that ended {outcome:?}"
        );
    }
    let retries: u64 = expected.retries.iter().map(|(.., n)| n).sum();
    assert_eq!(
        metrics.counter(RETRIES, &[]),
        retries,
        "{what}: the metrics' retries in all"
    );
}

/// How a `run` that gave up must report it.
#[derive(Debug, Clone, Copy)]
pub struct GaveUpAs<E: StdError + 'static> {
    /// Whether the request may have reached the server (`RunError::MaybeExecuted`) or
    /// provably did not (`RunError::NotExecuted`).
    pub may_have_executed: bool,
    /// Why the run stopped.
    pub reason: GiveUp,
    /// Attempts made.
    pub attempts: u32,
    /// The last failure's cause.
    pub cause: Option<ResetCause>,
    /// Whether the last attempt's error is the expected one.
    pub source: fn(Option<&AttemptError<E>>) -> bool,
}

/// Checks that `err` reports a run that gave up as `expected` says, its message
/// included.
///
/// # Panics
/// When it does not; the message shows the error.
pub fn assert_gave_up<E: StdError + 'static>(err: &RunError<E>, expected: &GaveUpAs<E>) {
    assert!(
        !matches!(err, RunError::Operation(_)),
        "expected a run that gave up, got the operation's own error: {err:?}"
    );
    assert_eq!(
        err.may_have_executed(),
        expected.may_have_executed,
        "may it have executed? {err:?}"
    );
    assert_eq!(err.reason(), Some(expected.reason), "{err:?}");
    assert_eq!(err.attempts(), Some(expected.attempts), "{err:?}");
    assert_eq!(err.cause(), expected.cause, "{err:?}");
    assert!(
        (expected.source)(err.attempt_error()),
        "another last attempt error: {err:?}"
    );
    let says = if expected.may_have_executed {
        "may have taken effect"
    } else {
        "did not reach the server"
    };
    assert!(err.to_string().contains(says), "{err}");
}
