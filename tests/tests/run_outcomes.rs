//! What a caller learns when `run` fails: whether the request may have taken effect.
//!
//! Once an attempt may have sent the request, every way the run ends is
//! `RunError::MaybeExecuted`, whatever stopped it (the deadline, the attempts, a closed
//! pool); only runs whose every attempt failed before sending are
//! `RunError::NotExecuted`. Each run counts once in `steadypool_runs_total`, callers
//! turned away by the open circuit included. The single runs that give up are rows of
//! one table. Against real servers on loopback.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use steadypool::metrics::{RetryOutcome, RunOutcome};
use steadypool::{
    AttemptError, CircuitState, Error, GiveUp, Idempotency, Pool, PoolBuilder, ResetCause,
    RetryPolicy, RunError,
};
use steadypool_tests::eventually;
use steadypool_tests::flaky::{self, Faults, LedgerError, LedgerManager, ResetPoint};
use steadypool_tests::ledger::{
    self, Counted, GaveUpAs, assert_gave_up, ledger_pool, ledger_pool_recorded,
};
use tokio::io::AsyncWriteExt;

/// The retry rules' policy: four attempts in ten seconds, short backoff.
fn policy() -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(4)
        .deadline(Duration::from_secs(10))
        .backoff(Duration::from_millis(5), Duration::from_millis(50))
}

fn fast_backoff() -> RetryPolicy {
    RetryPolicy::default().backoff(Duration::from_millis(5), Duration::from_millis(50))
}

/// What a single run does.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// `RUN id`, not idempotent.
    Run(u64),
    /// `RUN id`, idempotent.
    RunIdempotent(u64),
    /// `HANG id`, idempotent: the server never answers it.
    Hang(u64),
}

/// What happens before the run.
#[derive(Debug, Clone, Copy)]
enum Before {
    Nothing,
    ClosePool,
    StopServer,
}

/// What the server saw of request `id` by the end.
#[derive(Debug, Clone, Copy)]
struct ServerSaw {
    requests: usize,
    runs: u32,
    busy_sent: usize,
}

/// One run that gives up, and everything it must report.
struct GivingUp {
    name: &'static str,
    faults: fn() -> Faults,
    configure: fn(PoolBuilder<LedgerManager>) -> PoolBuilder<LedgerManager>,
    before: Before,
    op: Op,
    expected: GaveUpAs<LedgerError>,
    server: ServerSaw,
    /// Connections left in the pool: a connection cut mid-request is discarded.
    pool_size: usize,
    counted: Counted<'static>,
}

const GIVING_UP: &[GivingUp] = &[
    // BUSY each time: the server ran none of them.
    GivingUp {
        name: "transient errors stop at max_attempts",
        faults: || Faults::busy_first(100),
        configure: |b| b.retry_policy(policy().max_attempts(3)),
        before: Before::Nothing,
        op: Op::RunIdempotent(7),
        expected: GaveUpAs {
            may_have_executed: false,
            reason: GiveUp::Attempts,
            attempts: 3,
            cause: None,
            source: |s| matches!(s, Some(AttemptError::Operation(LedgerError::Busy))),
        },
        server: ServerSaw {
            requests: 3,
            runs: 0,
            busy_sent: 3,
        },
        pool_size: 1,
        counted: Counted {
            runs: &[(RunOutcome::NotExecuted, 1)],
            retries: &[(Some(ResetCause::Other), RetryOutcome::GaveUp, 1)],
        },
    },
    // The deadline bounds the operation too: one that hangs is cut off, its
    // connection discarded. Its request was sent: it may have taken effect,
    // idempotent or not. No failure was weighed for a retry.
    GivingUp {
        name: "the deadline cuts off a hanging operation",
        faults: Faults::default,
        configure: |b| {
            b.connect_timeout(Duration::from_millis(300))
                .retry_policy(policy().deadline(Duration::from_secs(1)))
        },
        before: Before::Nothing,
        op: Op::Hang(1),
        expected: GaveUpAs {
            may_have_executed: true,
            reason: GiveUp::Deadline,
            attempts: 1,
            cause: None,
            source: |s| s.is_none(),
        },
        server: ServerSaw {
            requests: 1,
            runs: 0,
            busy_sent: 0,
        },
        pool_size: 0,
        counted: Counted::runs(&[(RunOutcome::MaybeExecuted, 1)]),
    },
    // A closed pool is not retried, and nothing was sent.
    GivingUp {
        name: "a closed pool fails at once",
        faults: Faults::default,
        configure: |b| b,
        before: Before::ClosePool,
        op: Op::RunIdempotent(1),
        expected: GaveUpAs {
            may_have_executed: false,
            reason: GiveUp::NoConnection,
            attempts: 1,
            cause: None,
            source: |s| matches!(s, Some(AttemptError::Checkout(Error::Closed))),
        },
        server: ServerSaw {
            requests: 0,
            runs: 0,
            busy_sent: 0,
        },
        pool_size: 0,
        counted: Counted::runs(&[(RunOutcome::NotExecuted, 1)]),
    },
    // A server that runs a request and never replies. The client cannot know whether
    // it ran: when the deadline cuts the non-idempotent run, the error must say that
    // it may have taken effect (it did, once, and was not replayed), not merely that
    // the run gave up.
    GivingUp {
        name: "a request that ran but was never answered may have taken effect",
        faults: Faults::never_reply,
        configure: |b| {
            b.connect_timeout(Duration::from_millis(500)).retry_policy(
                RetryPolicy::default()
                    .max_attempts(3)
                    .deadline(Duration::from_secs(1)),
            )
        },
        before: Before::Nothing,
        op: Op::Run(1),
        expected: GaveUpAs {
            may_have_executed: true,
            reason: GiveUp::Deadline,
            attempts: 1,
            cause: None,
            source: |s| s.is_none(),
        },
        server: ServerSaw {
            requests: 1,
            runs: 1,
            busy_sent: 0,
        },
        pool_size: 0,
        counted: Counted::runs(&[(RunOutcome::MaybeExecuted, 1)]),
    },
    // Every connect refused: no attempt sent anything, so the run provably did not
    // run.
    GivingUp {
        name: "a run refused at every connect did not reach the server",
        faults: Faults::default,
        configure: |b| {
            b.circuit_open_after(10)
                .retry_policy(fast_backoff().max_attempts(3))
        },
        before: Before::StopServer,
        op: Op::Run(1),
        expected: GaveUpAs {
            may_have_executed: false,
            reason: GiveUp::Attempts,
            attempts: 3,
            cause: Some(ResetCause::Refused),
            source: |s| matches!(s, Some(AttemptError::Checkout(Error::Connect { .. }))),
        },
        server: ServerSaw {
            requests: 0,
            runs: 0,
            busy_sent: 0,
        },
        pool_size: 0,
        counted: Counted {
            runs: &[(RunOutcome::NotExecuted, 1)],
            retries: &[(Some(ResetCause::Refused), RetryOutcome::GaveUp, 1)],
        },
    },
    // A wait that would end past the deadline is not started: the run ends at once
    // with `GiveUp::Deadline`, long before the backoff could have ended (the run is
    // given a minute; the backoff is two). BUSY means the server did not run it.
    GivingUp {
        name: "no wait is started past the deadline",
        faults: || Faults::busy_first(1),
        configure: |b| {
            b.retry_policy(
                RetryPolicy::default()
                    .deadline(Duration::from_secs(10))
                    .backoff(Duration::from_secs(120), Duration::from_secs(240)),
            )
        },
        before: Before::Nothing,
        op: Op::Run(1),
        expected: GaveUpAs {
            may_have_executed: false,
            reason: GiveUp::Deadline,
            attempts: 1,
            cause: None,
            source: |s| matches!(s, Some(AttemptError::Operation(LedgerError::Busy))),
        },
        server: ServerSaw {
            requests: 1,
            runs: 0,
            busy_sent: 1,
        },
        pool_size: 1,
        counted: Counted {
            runs: &[(RunOutcome::NotExecuted, 1)],
            retries: &[(Some(ResetCause::Other), RetryOutcome::GaveUp, 1)],
        },
    },
];

/// Longer than any row's deadline, far shorter than a backoff it must not sleep.
const RUN_WITHIN: Duration = Duration::from_secs(60);

async fn run_once(pool: &Pool<LedgerManager>, op: Op) -> Result<(), RunError<LedgerError>> {
    match op {
        Op::Run(id) => pool
            .run(async |conn| flaky::run(conn, id).await)
            .await
            .map(drop),
        Op::RunIdempotent(id) => pool
            .run_idempotent(async |conn| flaky::run(conn, id).await)
            .await
            .map(drop),
        Op::Hang(id) => {
            pool.run_with(Idempotency::Idempotent, async |conn| {
                flaky::hang(conn, id).await
            })
            .await
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_a_single_run_gives_up_is_reported_and_counted() {
    for row in GIVING_UP {
        let name = row.name;
        let (server, pool, metrics) = ledger_pool_recorded((row.faults)(), row.configure).await;
        match row.before {
            Before::Nothing => {}
            Before::ClosePool => pool.close(),
            Before::StopServer => server.stop().await,
        }
        let Ok(result) = tokio::time::timeout(RUN_WITHIN, run_once(&pool, row.op)).await else {
            panic!("{name}: the run outlived {RUN_WITHIN:?}");
        };
        let Err(err) = result else {
            panic!("{name}: the run succeeded");
        };
        eprintln!("{name}: {err}");
        assert_gave_up(&err, &row.expected);
        let id = match row.op {
            Op::Run(id) | Op::RunIdempotent(id) | Op::Hang(id) => id,
        };
        // A request the server ran without answering may be counted just after the
        // client gave up.
        let saw = || {
            (server.requests(), server.runs(id), server.busy_sent())
                == (row.server.requests, row.server.runs, row.server.busy_sent)
        };
        assert!(
            eventually(Duration::from_secs(5), saw).await,
            "{name}: expected the server to see {:?}, it saw {} requests, ran {id} {} times, \
             sent {} BUSY",
            row.server,
            server.requests(),
            server.runs(id),
            server.busy_sent()
        );
        let status = pool.status();
        assert_eq!(status.size, row.pool_size, "{name}: {status:?}");
        assert_eq!(status.circuit, CircuitState::Closed, "{name}");
        ledger::assert_counted(&pool.stats(), name, &row.counted);
        // The metrics count the same runs and retries.
        ledger::assert_metrics_counted(&metrics, name, &row.counted);
    }
}

/// An idempotent run whose first attempt broke after the server ran the request, and
/// whose second attempt could not connect: the attempts ran out on a failed connect,
/// but the first attempt may have taken effect, and did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connect_after_an_attempt_that_may_have_run_still_may_have_taken_effect() {
    let (server, pool) = ledger_pool(Faults::reset_at(ResetPoint::During), |b| {
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
    ledger::assert_counted(
        &pool.stats(),
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
    let (server, pool) = ledger_pool(Faults::reset_at(ResetPoint::During), |b| {
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
    ledger::assert_counted(
        &pool.stats(),
        "closed after an attempt that may have run",
        &Counted {
            runs: &[(RunOutcome::MaybeExecuted, 1)],
            retries: &[(None, RetryOutcome::GaveUp, 1)],
        },
    );
}

/// A non-idempotent run whose first attempt failed with an error the manager
/// classifies as never sent (`Sent::No`: writing the request failed on a socket whose
/// sending side was already shut) is retried, and the retry succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_retries_an_error_that_says_nothing_was_sent() {
    let (server, pool) = ledger_pool(Faults::default(), |b| b.retry_policy(fast_backoff())).await;
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
    let retried_after = |cause| {
        pool.stats()
            .retries_by_cause(cause, RetryOutcome::Succeeded)
    };
    assert_eq!(
        retried_after(ResetCause::BrokenPipe) + retried_after(ResetCause::PeerReset),
        1
    );
    ledger::assert_counted(
        &pool.stats(),
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
    let (server, pool) = ledger_pool(Faults::busy_first(1), |b| {
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
    ledger::assert_counted(
        &pool.stats(),
        "a transient error",
        &Counted {
            runs: &[(RunOutcome::Ok, 1)],
            retries: &[(Some(ResetCause::Other), RetryOutcome::Succeeded, 1)],
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
    let (server, pool) = ledger_pool(Faults::default(), |b| {
        b.circuit_open_after(2)
            .circuit_open_for(Duration::from_secs(60))
            // The fixed open period and the fail-fast checkout these checks were written for.
            .circuit_first_open(Duration::from_secs(60))
            .circuit_wait(Duration::ZERO)
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
    ledger::assert_counted(
        &pool.stats(),
        "callers turned away",
        &Counted {
            runs: &[(RunOutcome::NotExecuted, CALLERS)],
            retries: &[(Some(ResetCause::Refused), RetryOutcome::GaveUp, 2)],
        },
    );
}

/// A listener that never accepts, its smallest accept queue filled: the kernel drops
/// further SYNs to it, as a black hole would. Keep both values alive.
async fn full_backlog() -> (socket2::Socket, Vec<tokio::net::TcpStream>) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    loop {
        let connect = tokio::net::TcpStream::connect(addr);
        match tokio::time::timeout(Duration::from_millis(200), connect).await {
            Ok(Ok(stream)) => fillers.push(stream),
            Ok(Err(e)) => panic!("filling the backlog: {e}"),
            Err(_) => break,
        }
        assert!(fillers.len() < 64, "the backlog never filled");
    }
    (socket, fillers)
}

/// Where a connect stalls: in the dial, which times out on the dialer's own, shorter
/// timer, or in a handshake that waits for a greeting the server never sends, which
/// the pool's timer around the whole connect cuts.
enum Stall {
    Dial,
    Handshake,
}

struct StallingManager(std::net::SocketAddr, Stall);

impl steadypool::Manager for StallingManager {
    type Connection = tokio::net::TcpStream;
    type Error = std::io::Error;

    async fn connect(&self, dialer: &steadypool::Dialer) -> std::io::Result<Self::Connection> {
        use tokio::io::AsyncReadExt;
        match self.1 {
            Stall::Dial => {
                let impatient = dialer.clone().connect_timeout(dialer.timeout() / 4);
                Ok(impatient.connect(&self.0.into()).await?)
            }
            Stall::Handshake => {
                let mut stream = dialer.connect(&self.0.into()).await?;
                stream.read_exact(&mut [0u8; 1]).await?;
                Ok(stream)
            }
        }
    }
}

/// A connect that timed out reaches the caller in one shape, whichever timer
/// noticed: the dialer's (a black-holed SYN) or the pool's (a handshake that hangs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_that_timed_out_has_one_shape_whichever_timer_fired() {
    let (backlog, _fillers) = full_backlog().await;
    let black_hole = backlog.local_addr().unwrap().as_socket().unwrap();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let connect_timeout = Duration::from_millis(400);
    for manager in [
        StallingManager(black_hole, Stall::Dial),
        StallingManager(silent.local_addr().unwrap(), Stall::Handshake),
    ] {
        let pool = Pool::builder(manager)
            .connect_timeout(connect_timeout)
            .retry_policy(fast_backoff().max_attempts(1))
            .build()
            .unwrap();
        let err = pool
            .run(async |conn| conn.write_all(b"x").await)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("connect_timeout"), "{err}");
        assert!(
            matches!(
                err,
                RunError::NotExecuted {
                    cause: Some(ResetCause::ConnectTimeout),
                    source: Some(AttemptError::Checkout(Error::ConnectTimeout(after))),
                    ..
                } if after == connect_timeout
            ),
            "{err:?}"
        );
    }
}
