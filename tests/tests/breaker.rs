//! The connect gate against an upstream that goes down and comes back on the same
//! port: retries back off with jitter, the circuit opens, checkouts fail fast without
//! dialing while it is open (with a zero `circuit_wait`) or wait for the upstream's
//! return (with the default), and the pool recovers within one open period of the
//! upstream's return. An upstream that refuses for good (a certificate that does not
//! verify) gets its answer to every caller at once, and is still spared a storm.
//! The gate's width as a server sees it: a burst reopens connections a load balancer
//! closed all at once while connects succeed, and two at a time after one failed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use steadypool::metrics::{CHECKOUT_ERRORS, CONNECTS, CheckoutFailure, RESETS};
use steadypool::{
    AttemptError, CircuitState, Classify, Error, GiveUp, Phase, Pool, ResetCause, RetryPolicy,
    RunError,
};
use steadypool_tests::eventually;
use steadypool_tests::flaky::{self, Faults, LedgerManager, LedgerServer};
use steadypool_tests::ledger::{GaveUpAs, assert_gave_up};
use steadypool_tests::line_manager::GreetedManager;
use steadypool_tests::recorded::RecordedMetrics;
use steadypool_tests::tls::{TestCa, TlsServer, TlsServerOptions};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

const BASE: Duration = Duration::from_millis(40);
/// Long enough that the checks made while the circuit is open finish inside even its
/// shortest open period (half of this) on a loaded machine.
const OPEN_FOR: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_then_back() {
    let server = LedgerServer::start(Faults::default()).await.unwrap();
    let manager = LedgerManager::new(server.addr());
    let pool = Pool::builder(manager.clone())
        .name("breaker")
        .max_size(4)
        .connect_timeout(Duration::from_secs(1))
        .max_concurrent_connects(2)
        .circuit_open_after(10)
        .circuit_open_for(OPEN_FOR)
        // The fixed open period and the fail-fast checkout these checks were written for.
        .circuit_first_open(OPEN_FOR)
        .circuit_wait(Duration::ZERO)
        .retry_policy(
            RetryPolicy::default()
                .max_attempts(4)
                .deadline(Duration::from_secs(10))
                .backoff(BASE, Duration::from_secs(1))
                .jitter_seed(52_886),
        )
        .build()
        .unwrap();
    // Up: it works. The connection is taken out of the pool so that the attempts
    // below all dial (a pooled one would first be found dead at checkout).
    let mut warm = pool.get().await.unwrap();
    assert_eq!(flaky::run(&mut warm, 1).await.unwrap(), 1);
    drop(warm.detach());
    assert_eq!(manager.connects().len(), 1);

    server.stop().await;

    // Two requests, one after the other, four attempts each, every connect refused.
    // Between one request's attempts the n-th wait is drawn from [d, 2d) with d =
    // base, 2 x base, 4 x base: each wait is at least d, and without jitter every wait
    // would sit right at d.
    let mut stretch: Vec<f64> = Vec::new();
    for id in [2, 3] {
        let before = manager.connects().len();
        let err = pool
            .run_idempotent(async |conn| flaky::run(conn, id).await)
            .await
            .unwrap_err();
        assert_eq!(err.cause(), Some(ResetCause::Refused), "{err}");
        let starts = manager.connects()[before..].to_vec();
        assert_eq!(starts.len(), 4, "each attempt dialed once");
        for (n, pair) in starts.windows(2).enumerate() {
            let floor = BASE * 2u32.pow(n as u32);
            let wait = pair[1] - pair[0];
            assert!(wait >= floor, "wait {n} was {wait:?}, below {floor:?}");
            stretch.push(wait.as_secs_f64() / floor.as_secs_f64() - 1.0);
        }
    }
    assert_eq!(
        pool.status().circuit,
        CircuitState::Closed,
        "8 < 10 failures"
    );
    assert!(
        stretch.iter().any(|s| *s > 0.1),
        "waits are not jittered (each at its floor): {stretch:?}"
    );

    // A third request: its second failed connect is the tenth in a row, which opens
    // the circuit; its third attempt fails fast. No attempt reached the server.
    let err = pool
        .run_idempotent(async |conn| flaky::run(conn, 4).await)
        .await
        .unwrap_err();
    assert_gave_up(
        &err,
        &GaveUpAs {
            may_have_executed: false,
            reason: GiveUp::NoConnection,
            attempts: 3,
            cause: Some(ResetCause::Refused),
            source: |s| {
                matches!(
                    s,
                    Some(AttemptError::Checkout(Error::CircuitOpen {
                        cause: ResetCause::Refused,
                        failures: 10,
                        ..
                    }))
                )
            },
        },
    );
    assert_eq!(manager.connects().len(), 1 + 10);
    assert_eq!(pool.status().circuit, CircuitState::Open);

    // Open: checkouts that need a connection fail at once, naming the cause, and
    // nobody dials.
    let dialed = manager.connects().len();
    for _ in 0..20 {
        match pool.get().await {
            Err(err) => {
                let Error::CircuitOpen {
                    cause,
                    retry_in,
                    ref last_error,
                    ..
                } = err
                else {
                    panic!("expected CircuitOpen, got {err:?}");
                };
                assert_eq!(cause, ResetCause::Refused);
                assert!(retry_in <= OPEN_FOR);
                // The upstream's own words travel with the fast failure.
                assert!(last_error.contains("refused"), "{last_error:?}");
                assert!(err.to_string().contains(&**last_error), "{err}");
            }
            other => panic!("expected CircuitOpen, got {other:?}"),
        }
    }
    let err = pool
        .run_idempotent(async |conn| flaky::run(conn, 5).await)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RunError::NotExecuted {
                reason: GiveUp::NoConnection,
                attempts: 1,
                source: Some(AttemptError::Checkout(Error::CircuitOpen { .. })),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("refused"), "{err}");
    assert_eq!(manager.connects().len(), dialed, "no dial while open");

    // Back: the pool recovers at the first checkout after the open period ends.
    server.restart().unwrap();
    let back = Instant::now();
    let recovered = loop {
        if pool.get().await.is_ok() {
            break back.elapsed();
        }
        assert!(
            back.elapsed() < OPEN_FOR * 3,
            "no recovery within {:?}",
            OPEN_FOR * 3
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!(
        "recovered {recovered:?} after the upstream came back (open period up to {OPEN_FOR:?})"
    );
    assert!(
        recovered <= OPEN_FOR + Duration::from_secs(2),
        "recovered after {recovered:?}"
    );
    assert_eq!(pool.status().circuit, CircuitState::Closed);
    assert_eq!(
        pool.run_idempotent(async |conn| flaky::run(conn, 6).await)
            .await
            .unwrap(),
        1
    );
}

/// A failed trial connect keeps the circuit open for another (random) period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_trial_reopens_the_circuit() {
    let server = LedgerServer::start(Faults::default()).await.unwrap();
    let addr = server.addr();
    server.stop().await;
    let manager = LedgerManager::new(addr);
    let (pool, metrics) = RecordedMetrics::build(
        Pool::builder(manager.clone())
            .circuit_open_after(2)
            .circuit_open_for(Duration::from_secs(2))
            // The fixed open period and the fail-fast checkout these checks were written for.
            .circuit_first_open(Duration::from_secs(2))
            .circuit_wait(Duration::ZERO),
    )
    .unwrap();
    for _ in 0..2 {
        assert!(matches!(pool.get().await, Err(Error::Connect { .. })));
    }
    assert_eq!(pool.status().circuit, CircuitState::Open);
    tokio::time::sleep(Duration::from_millis(2050)).await;
    // The trial: dials once, fails, reopens.
    assert!(matches!(pool.get().await, Err(Error::Connect { .. })));
    assert_eq!(manager.connects().len(), 3);
    assert_eq!(pool.status().circuit, CircuitState::Open);
    assert!(matches!(
        pool.get().await,
        Err(Error::CircuitOpen { failures: 3, .. })
    ));
    // The books count each failed connect by cause, each checkout failure by kind, and
    // the connect the gate turned away; the metrics say the same.
    let stats = pool.stats();
    assert_eq!(stats.connect_failures, 3, "{stats:?}");
    assert_eq!(stats.resets(ResetCause::Refused, Phase::Connect), 3);
    assert_eq!(stats.gate_rejections, 1);
    assert_eq!(stats.checkout_errors, 4);
    for (failure, n) in [
        (CheckoutFailure::ConnectFailed, 3),
        (CheckoutFailure::CircuitOpen, 1),
        (CheckoutFailure::Timeout, 0),
    ] {
        assert_eq!(stats.checkout_failures(failure), n, "{failure:?}");
        assert_eq!(
            metrics.counter(CHECKOUT_ERRORS, &[("error", failure.as_str())]),
            n,
            "{failure:?}"
        );
    }
    assert_eq!(
        metrics.counter(RESETS, &[("cause", "refused"), ("phase", "connect")]),
        3
    );
    assert_eq!(
        metrics.counter(CONNECTS, &[("outcome", "refused")]),
        stats.connect_failures
    );
}

/// With the default `circuit_wait`, a request made while the upstream restarts waits
/// for it instead of failing: the circuit's short first open periods find it back,
/// and the trial's success wakes every parked checkout. While the upstream is down
/// the waiting requests make only the trial connects, not one connect each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_made_during_a_short_restart_wait_for_the_upstream_and_succeed() {
    let server = LedgerServer::start(Faults::default()).await.unwrap();
    let manager = LedgerManager::new(server.addr());
    let pool = Pool::builder(manager.clone())
        .max_size(8)
        .connect_timeout(Duration::from_secs(1))
        .retry_policy(
            RetryPolicy::default()
                .max_attempts(3)
                .deadline(Duration::from_secs(10)),
        )
        .build()
        .unwrap();
    server.stop().await;
    let started = Instant::now();
    let requests: Vec<_> = (0..8u64)
        .map(|id| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let id = 100 + id;
                pool.run_idempotent(async move |conn| flaky::run(conn, id).await)
                    .await
            })
        })
        .collect();
    // The upstream is down for 600 ms: longer than the first open periods (100 ms,
    // doubling to 250 ms), far shorter than the default `circuit_wait` of 2 s.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let dialed_while_down = manager.connects().len();
    server.restart().unwrap();
    let back = Instant::now();
    for request in requests {
        assert_eq!(request.await.unwrap().unwrap(), 1);
    }
    let after_return = back.elapsed();
    eprintln!(
        "8 requests answered {after_return:?} after the upstream's return, {:?} after they \
         started; {dialed_while_down} connects while it was down",
        started.elapsed()
    );
    // 3 connects open the circuit, then one trial per open period: 100 ms at most
    // for the first, then up to 200 and 250 ms; not one per request and retry.
    assert!(
        dialed_while_down <= 3 + 6,
        "{dialed_while_down} connects while down"
    );
    // Within one open period (250 ms at most) plus generous room for a loaded machine.
    assert!(
        after_return < Duration::from_secs(2),
        "answered {after_return:?} after the return"
    );
    assert_eq!(pool.status().circuit, CircuitState::Closed);
}

/// The wait is bounded: through an outage longer than `circuit_wait`, a checkout
/// fails with `CircuitOpen` once it has waited that long, naming the cause, and the
/// parked checkouts never dial themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_waits_on_the_open_circuit_no_longer_than_circuit_wait() {
    let server = LedgerServer::start(Faults::default()).await.unwrap();
    let addr = server.addr();
    server.stop().await;
    let manager = LedgerManager::new(addr);
    let wait = Duration::from_millis(700);
    let pool = Pool::builder(manager.clone())
        .circuit_open_after(1)
        .circuit_open_for(Duration::from_secs(60))
        .circuit_first_open(Duration::from_secs(60))
        .circuit_wait(wait)
        .build()
        .unwrap();
    // The checkout whose connect opened the circuit waits too, rather than report a
    // failed connect while it has time to wait for the next trial.
    let started = Instant::now();
    assert!(matches!(
        pool.get().await,
        Err(Error::CircuitOpen {
            cause: ResetCause::Refused,
            failures: 1,
            ..
        })
    ));
    assert!(started.elapsed() >= wait);
    let started = Instant::now();
    let parked: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.get().await.map(drop) })
        })
        .collect();
    for checkout in parked {
        match checkout.await.unwrap() {
            Err(Error::CircuitOpen { cause, .. }) => assert_eq!(cause, ResetCause::Refused),
            other => panic!("expected CircuitOpen, got {other:?}"),
        }
    }
    let waited = started.elapsed();
    assert!(
        waited >= wait && waited < wait + Duration::from_secs(3),
        "waited {waited:?}"
    );
    assert_eq!(manager.connects().len(), 1, "no dial while open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_of_an_upstream_that_refuses_for_good_hear_it_at_once_without_a_storm() {
    use steadypool::drivers::tls::TlsManager;
    use tokio::io::AsyncWriteExt;

    let ca = TestCa::new();
    let server = TlsServer::start(&ca, TlsServerOptions::default()).await;
    let stranger = TestCa::new();
    let manager = TlsManager::new(server.addr(), stranger.client_config(), "localhost").unwrap();
    // Every wait the pool allows is long: any caller that waited on the circuit, or
    // retried, would show in the time taken.
    let patience = Duration::from_secs(30);
    let pool = Pool::builder(manager)
        .max_size(8)
        .wait_timeout(patience)
        .circuit_wait(patience)
        .retry_policy(RetryPolicy::default().deadline(patience))
        .build()
        .unwrap();
    let callers = 40;
    let started = Instant::now();
    let runs: Vec<_> = (0..callers)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.run_idempotent(async |conn| conn.write_all(b"ping\n").await)
                    .await
            })
        })
        .collect();
    let mut for_good: u64 = 0;
    for run in runs {
        match run.await.unwrap() {
            Err(RunError::NotExecuted {
                reason: GiveUp::Permanent,
                attempts: 1,
                source: Some(AttemptError::Checkout(Error::Connect { source, .. })),
                ..
            }) => {
                assert!(format!("{source:?}").contains("InvalidCertificate"));
                for_good += 1;
            }
            Err(RunError::NotExecuted {
                reason: GiveUp::NoConnection,
                attempts: 1,
                source: Some(AttemptError::Checkout(Error::CircuitOpen { last_error, .. })),
                ..
            }) => assert!(
                last_error.contains("invalid peer certificate"),
                "{last_error}"
            ),
            other => panic!("{other:?}"),
        }
    }
    let took = started.elapsed();
    assert!(
        took < patience / 2,
        "{took:?}: a caller waited on the circuit or retried"
    );
    let stats = pool.stats();
    eprintln!(
        "{callers} callers answered in {took:?}: {for_good} with the handshake error, after \
         {} connects",
        stats.connect_failures
    );
    assert!(
        for_good >= 3,
        "{for_good} callers got the handshake error itself"
    );
    assert_eq!(stats.connect_failures, for_good, "{stats:?}");
    // Without the circuit each of the 40 callers would dial, and without the rule each
    // would dial three times.
    assert!(
        stats.connect_failures <= 20,
        "{} connects for {callers} callers in {took:?}: the circuit did not hold them",
        stats.connect_failures
    );
    assert!(stats.gate_rejections >= 1, "{stats:?}");
    assert_eq!(server.handshakes(), 0);

    // An error type of the application's own that wraps the handshake's error keeps
    // what it says, through `#[derive(Classify)]`. After the open period (at most
    // 250 ms) the next checkout makes the trial connect, and gets its error.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = pool.get().await.unwrap_err();
    assert!(err.is_permanent(), "{err:?}");
    let Error::Connect { source, .. } = err else {
        panic!("the next trial connect is refused the same way: {err:?}");
    };
    assert!(AppError::Io(source).is_permanent());
}

#[derive(Debug, thiserror::Error, Classify)]
enum AppError {
    #[error("i/o: {0}")]
    #[classify(transport)]
    Io(#[source] std::io::Error),
}

/// How long the holding server keeps each new connection in its handshake: long
/// enough that a burst's connects, if the gate lets them, overlap on a loaded machine.
const HOLD: Duration = Duration::from_millis(400);
/// Generous: a wait for loopback events, which take milliseconds.
const PATIENCE: Duration = Duration::from_secs(10);

/// A server whose handshake takes [`HOLD`]: it greets each connection that long after
/// accepting it, or while failing closes it ungreeted (a failed connect), and counts
/// how many connections were in their handshake at once. On request it closes every
/// greeted connection, as a load balancer's idle timeout does.
struct HoldingServer {
    addr: SocketAddr,
    most_at_once: Arc<AtomicUsize>,
    greeted: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    close_all: watch::Sender<u64>,
    acceptor: tokio::task::AbortHandle,
}

impl Drop for HoldingServer {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl HoldingServer {
    async fn start() -> HoldingServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let most_at_once = Arc::new(AtomicUsize::new(0));
        let greeted = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(AtomicBool::new(false));
        let (close_all, closing) = watch::channel(0);
        let acceptor = tokio::spawn({
            let (most_at_once, greeted, failing) = (
                Arc::clone(&most_at_once),
                Arc::clone(&greeted),
                Arc::clone(&failing),
            );
            let in_handshake = Arc::new(AtomicUsize::new(0));
            async move {
                let mut handlers = tokio::task::JoinSet::new();
                while let Ok((mut stream, _)) = listener.accept().await {
                    let (in_handshake, most_at_once, greeted, failing) = (
                        Arc::clone(&in_handshake),
                        Arc::clone(&most_at_once),
                        Arc::clone(&greeted),
                        Arc::clone(&failing),
                    );
                    let mut closing = closing.clone();
                    handlers.spawn(async move {
                        let now = in_handshake.fetch_add(1, Ordering::SeqCst) + 1;
                        most_at_once.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(HOLD).await;
                        // Out of the handshake before the client can see its outcome.
                        in_handshake.fetch_sub(1, Ordering::SeqCst);
                        if failing.load(Ordering::SeqCst) {
                            return;
                        }
                        greeted.fetch_add(1, Ordering::SeqCst);
                        closing.mark_unchanged();
                        if tokio::io::AsyncWriteExt::write_all(&mut stream, b"HELLO\n")
                            .await
                            .is_err()
                        {
                            return;
                        }
                        let mut sink = Vec::new();
                        tokio::select! {
                            _ = closing.changed() => {}
                            _ = stream.read_to_end(&mut sink) => {}
                        }
                    });
                }
            }
        });
        HoldingServer {
            addr,
            most_at_once,
            greeted,
            failing,
            close_all,
            acceptor: acceptor.abort_handle(),
        }
    }

    /// The most connections in their handshake at once since the last call.
    fn take_most_at_once(&self) -> usize {
        self.most_at_once.swap(0, Ordering::SeqCst)
    }

    /// Closes every greeted connection, and waits for the closes to reach the pool.
    async fn close_all(&self) {
        self.close_all.send_modify(|generation| *generation += 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_reconnects_at_once_while_connects_succeed_and_two_at_a_time_after_a_failure() {
    const BURST: usize = 8;
    let server = HoldingServer::start().await;
    let pool = Pool::builder(GreetedManager(server.addr))
        .max_size(BURST)
        // The gate's width alone: the circuit never opens.
        .circuit_open_after(u32::MAX)
        .reaper_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    // Each checkout of a burst holds its connection until all have one, so each
    // needs a connection of its own.
    let burst = async |pool: &Pool<GreetedManager>| {
        let checkouts: Vec<_> = (0..BURST)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.get().await })
            })
            .collect();
        let mut outcomes = Vec::new();
        for checkout in checkouts {
            outcomes.push(checkout.await.unwrap());
        }
        outcomes
    };

    // A new pool's first burst: its connects succeed, and widen the gate.
    let held = burst(&pool).await;
    assert!(held.iter().all(Result::is_ok));
    drop(held);
    assert_eq!(server.greeted.load(Ordering::SeqCst), BURST);
    server.take_most_at_once();

    // Every idle connection closed by the upstream: the next burst reopens them all
    // at once, as a pool without a gate would.
    server.close_all().await;
    let held = burst(&pool).await;
    assert!(held.iter().all(Result::is_ok));
    drop(held);
    assert_eq!(
        server.greeted.load(Ordering::SeqCst),
        2 * BURST,
        "every checkout of the second burst opened a connection"
    );
    let most = server.take_most_at_once();
    assert_eq!(
        most, BURST,
        "connects of a healthy pool's burst in flight at once"
    );

    // The upstream now fails every handshake. Once one connect failed, a burst's
    // connects go two at a time.
    server.failing.store(true, Ordering::SeqCst);
    server.close_all().await;
    assert!(pool.get().await.is_err());
    server.take_most_at_once();
    let failed = burst(&pool).await;
    assert!(failed.iter().all(Result::is_err));
    let most = server.take_most_at_once();
    assert_eq!(most, 2, "connects in flight at once after a failure");
}

/// Checkouts parked on the open circuit are not in deadpool's queue: `close()` must
/// reach them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_the_checkouts_parked_on_the_open_circuit_at_once() {
    let server = LedgerServer::start(Faults::default()).await.unwrap();
    let addr = server.addr();
    server.stop().await;
    let manager = LedgerManager::new(addr);
    let wait = Duration::from_secs(20);
    // One connect at a time: the first one's refusal opens the circuit before another
    // dials, so every checkout ends up parked on it.
    let pool = Pool::builder(manager.clone())
        .max_concurrent_connects(1)
        .circuit_open_after(1)
        .circuit_open_for(Duration::from_secs(60))
        .circuit_first_open(Duration::from_secs(60))
        .circuit_wait(wait)
        .build()
        .unwrap();
    let parked: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.get().await.map(drop) })
        })
        .collect();
    // One refused connect opened the circuit; every checkout now waits on it.
    assert!(eventually(PATIENCE, || pool.status().circuit == CircuitState::Open).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dialed = manager.connects().len();
    assert_eq!(dialed, 1);

    let closed_at = Instant::now();
    pool.close();
    for checkout in parked {
        match checkout.await.unwrap() {
            Err(Error::Closed) => {}
            other => panic!("expected Closed, got {other:?}"),
        }
    }
    let took = closed_at.elapsed();
    assert!(
        took < wait / 2,
        "the parked checkouts ended {took:?} after close()"
    );
    assert_eq!(manager.connects().len(), dialed, "dialed after close()");
}

/// Checkouts waiting for a permit of the connect gate: `close()` ends them, and
/// nothing is dialed for the closed pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_the_checkouts_waiting_for_a_connect_permit_without_dialing() {
    let server = HoldingServer::start().await;
    let pool = Pool::builder(GreetedManager(server.addr))
        .max_size(4)
        .max_concurrent_connects(1)
        .build()
        .unwrap();
    // Each checkout notes whether the server had greeted a connection yet when it
    // ended: an order of events, not a time.
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let (pool, greeted) = (pool.clone(), Arc::clone(&server.greeted));
            tokio::spawn(async move {
                let outcome = pool.get().await.map(drop);
                (outcome, greeted.load(Ordering::SeqCst))
            })
        })
        .collect();
    // One connect is in its handshake (held for HOLD); the other two wait their turn.
    assert!(eventually(PATIENCE, || server.most_at_once.load(Ordering::SeqCst) == 1).await);

    pool.close();
    let mut ended_before_any_greeting = 0;
    for checkout in waiting {
        match checkout.await.unwrap() {
            (Err(Error::Closed), greeted) => {
                ended_before_any_greeting += usize::from(greeted == 0);
            }
            (other, _) => panic!("expected Closed, got {other:?}"),
        }
    }
    // The one in its handshake ends with it; the two waiting end at close(), before
    // the handshake under way is over.
    assert_eq!(
        ended_before_any_greeting, 2,
        "checkouts that ended before the handshake under way"
    );
    // Past the handshake of any connect that might still start.
    tokio::time::sleep(3 * HOLD).await;
    assert_eq!(
        server.greeted.load(Ordering::SeqCst),
        1,
        "dialed after close()"
    );
    let stats = pool.stats();
    assert_eq!(stats.opened, 1, "{stats:?}");
    assert_eq!(pool.status().size, 0);
}
