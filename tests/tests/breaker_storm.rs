//! The reconnect storm: 50 pools of 8 busy connections each against one upstream that
//! crashes (every connection reset, connects refused) and comes back two seconds
//! later. The connect gate must spread the pools' connect attempts out (no 100 ms
//! window holds more than a third of them), and every pool must recover.
//!
//! The gate decides *when* a connect may go; when it actually starts is up to the
//! scheduler. On a loaded machine the runtime's two workers (400 tasks) can stall for
//! hundreds of milliseconds, and every circuit whose open period ended during the
//! stall makes its trial connect, and then its seven reconnects, the moment the stall
//! ends: a stall around the upstream's return crowds the whole recovery into one
//! window although the gate spread it. So each connect is placed at the moment the
//! gate released it, which the pools tell their callers: a checkout the open circuit
//! turned away says when the next trial may start (`Error::CircuitOpen::retry_in`).
//! The test stalls the runtime as the upstream returns on every run, so that this
//! holds on a quiet machine as on a loaded one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex, PoisonError};
use std::time::{Duration, Instant};

use steadypool::{AttemptError, Error, Pool, RetryPolicy};
use steadypool_tests::flaky::{self, Faults, LedgerManager, LedgerServer, busiest_window};

const POOLS: usize = 50;
const CONNECTIONS: usize = 8;
const DOWN_FOR: Duration = Duration::from_secs(2);
/// How long the runtime stalls as the upstream returns.
const STALL: Duration = Duration::from_millis(500);

/// Open periods a pool's callers were told of: (when told, when the period ends).
type Announced = Arc<Mutex<Vec<(Instant, Instant)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_pools_reconnect_spread_out_and_all_recover() {
    let server = LedgerServer::start(Faults::default()).await.unwrap();
    let running = Arc::new(AtomicBool::new(true));
    let mut pools = Vec::with_capacity(POOLS);
    let mut last_ok: Vec<Arc<Mutex<Option<Instant>>>> = Vec::with_capacity(POOLS);
    // Per pool: when each connect started, and the open periods its callers were told of.
    let mut connects: Vec<Arc<Mutex<Vec<Instant>>>> = Vec::with_capacity(POOLS);
    let mut announced: Vec<Announced> = Vec::with_capacity(POOLS);
    let mut workers = Vec::new();
    for p in 0..POOLS {
        let log = Arc::default();
        let told: Announced = Arc::default();
        let pool = Pool::builder(LedgerManager::with_log(server.addr(), Arc::clone(&log)))
            .name(format!("storm-{p}"))
            .max_size(CONNECTIONS)
            .connect_timeout(Duration::from_secs(1))
            .max_concurrent_connects(2)
            .circuit_open_after(3)
            .circuit_open_for(Duration::from_secs(1))
            // The fixed open period and the fail-fast checkout these checks were written for.
            .circuit_first_open(Duration::from_secs(1))
            .circuit_wait(Duration::ZERO)
            .retry_policy(
                RetryPolicy::default()
                    .max_attempts(3)
                    .deadline(Duration::from_secs(5))
                    .backoff(Duration::from_millis(50), Duration::from_secs(1)),
            )
            .build()
            .unwrap();
        let ok = Arc::new(Mutex::new(None));
        for w in 0..CONNECTIONS {
            let pool = pool.clone();
            let ok = Arc::clone(&ok);
            let told = Arc::clone(&told);
            let running = Arc::clone(&running);
            let mut rng = fastrand::Rng::with_seed((p * CONNECTIONS + w) as u64);
            workers.push(tokio::spawn(async move {
                let mut id = ((p * CONNECTIONS + w) as u64) << 32;
                while running.load(Ordering::Relaxed) {
                    id += 1;
                    // Each worker holds its connection for a while, so each pool keeps
                    // all eight connections busy.
                    let hold = Duration::from_millis(rng.u64(50..100));
                    let result = pool
                        .run_idempotent(async move |conn| {
                            let runs = flaky::run(conn, id).await?;
                            tokio::time::sleep(hold).await;
                            Ok(runs)
                        })
                        .await;
                    match &result {
                        Ok(_) => {
                            *ok.lock().unwrap_or_else(PoisonError::into_inner) =
                                Some(Instant::now());
                        }
                        Err(err) => {
                            // A zero `retry_in` means a trial is in flight: it tells
                            // no period's end.
                            if let Some(AttemptError::Checkout(Error::CircuitOpen {
                                retry_in, ..
                            })) = err.attempt_error()
                                && !retry_in.is_zero()
                            {
                                let now = Instant::now();
                                told.lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .push((now, now + *retry_in));
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(rng.u64(0..20))).await;
                }
            }));
        }
        pools.push(pool);
        last_ok.push(ok);
        connects.push(log);
        announced.push(told);
    }

    let warm = Instant::now();
    while pools.iter().any(|p| p.status().size < CONNECTIONS) {
        assert!(
            warm.elapsed() < Duration::from_secs(20),
            "pools never filled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let crash = Instant::now();
    server.stop().await;
    tokio::time::sleep(DOWN_FOR).await;
    server.restart().unwrap();
    let back = Instant::now();
    // The worst moment for a stall, made to happen on every run: both workers blocked
    // as the upstream returns, as when other processes take the CPU. Every circuit
    // whose open period ends meanwhile connects when they resume.
    let stall = Arc::new(Barrier::new(2));
    for _ in 0..2 {
        let stall = Arc::clone(&stall);
        tokio::spawn(async move {
            // Both wait for each other, so both workers are held at once.
            stall.wait();
            std::thread::sleep(STALL);
        });
    }

    let all_recovered = |last_ok: &[Arc<Mutex<Option<Instant>>>]| {
        last_ok.iter().all(|ok| {
            ok.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some_and(|at| at > back)
        })
    };
    while !all_recovered(&last_ok) {
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "not every pool recovered within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovered_in = back.elapsed();
    // Let the pools refill to eight connections, then stop the workload.
    let refill = Instant::now();
    while pools.iter().any(|p| p.status().size < CONNECTIONS)
        && refill.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.store(false, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    let mut attempts = Vec::new();
    let mut released = Vec::new();
    for (p, (log, told)) in connects.iter().zip(&announced).enumerate() {
        let log = log.lock().unwrap_or_else(PoisonError::into_inner);
        let told: Vec<(Instant, Instant)> = told
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .filter(|(at, _)| *at >= crash)
            .collect();
        let started: Vec<Instant> = log.iter().copied().filter(|at| *at >= crash).collect();
        assert!(
            !told.is_empty(),
            "pool {p}'s circuit never turned a checkout away during the outage"
        );
        released.extend(release_times(&started, &told));
        attempts.extend(started);
    }
    let window = Duration::from_millis(100);
    let (busiest, busiest_at) = busiest_window(&released, window);
    let (crowded, crowded_at) = busiest_window(&attempts, window);
    let during_outage = attempts.iter().filter(|at| **at < back).count();
    eprintln!(
        "{} connect attempts after the crash ({during_outage} while down); busiest 100 ms \
         window of release: {busiest}, starting {:?} after the crash (of start: {crowded}, \
         starting {:?} after it); every pool recovered {recovered_in:?} after the upstream \
         came back",
        attempts.len(),
        busiest_at.map(|at| at - crash),
        crowded_at.map(|at| at - crash),
    );
    assert!(
        attempts.len() >= POOLS * CONNECTIONS,
        "every connection was reopened: {}",
        attempts.len()
    );
    assert!(
        busiest * 3 <= attempts.len(),
        "the gate released {busiest} of {} connect attempts in one 100 ms window",
        attempts.len()
    );
}

/// When the gate released each of one pool's connects (`started`, in order), given
/// the open periods the pool announced (`told`: when told, when the period ends).
///
/// A connect that follows an announced open period is the trial the period's end let
/// through, or one of the reconnects the trial's success let through: it was released
/// when the period ended. An announcement is an upper bound of that end (the caller
/// reads the clock a little after the gate did), so the earliest one counts, and
/// never later than the connect itself. Announcements count for the first connect
/// after them, and only if the period ends after the connect before them: a refusal
/// read late can belong to the period before. A connect with no period before it
/// (set off by the crash itself) was released when it started.
fn release_times(started: &[Instant], told: &[(Instant, Instant)]) -> Vec<Instant> {
    let mut released = Vec::with_capacity(started.len());
    let mut previous: Option<Instant> = None;
    let mut release: Option<Instant> = None;
    for &at in started {
        let period_end = told
            .iter()
            .filter(|(when, ends)| {
                *when < at && previous.is_none_or(|prev| *when > prev && *ends > prev)
            })
            .map(|(_, ends)| *ends)
            .min();
        if let Some(end) = period_end {
            release = Some(end.min(at));
        }
        released.push(release.unwrap_or(at));
        previous = Some(at);
    }
    released
}

/// With the default `circuit_wait` the same kind of fleet rides out a short restart:
/// requests wait on the open circuit instead of failing, none started after the
/// upstream's return fails, and while it is down the waiting requests leave the
/// dialing to one trial connect per open period per pool, far from one connect per
/// request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_waiting_on_its_circuits_fails_no_request_after_the_return() {
    const FLEET: usize = 20;
    const RESTART: Duration = Duration::from_secs(1);
    let server = LedgerServer::start(Faults::default()).await.unwrap();
    let running = Arc::new(AtomicBool::new(true));
    let mut logs = Vec::with_capacity(FLEET);
    let mut workers = Vec::new();
    for p in 0..FLEET {
        let log: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let pool = Pool::builder(LedgerManager::with_log(server.addr(), Arc::clone(&log)))
            .max_size(CONNECTIONS)
            .connect_timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        logs.push(log);
        for w in 0..CONNECTIONS {
            let pool = pool.clone();
            let running = Arc::clone(&running);
            let mut rng = fastrand::Rng::with_seed((p * CONNECTIONS + w) as u64);
            workers.push(tokio::spawn(async move {
                let mut outcomes = Vec::new();
                let mut id = ((p * CONNECTIONS + w) as u64) << 32;
                while running.load(Ordering::Relaxed) {
                    id += 1;
                    let started = Instant::now();
                    let result = pool
                        .run_idempotent(async move |conn| flaky::run(conn, id).await)
                        .await;
                    outcomes.push((started, result.is_ok()));
                    tokio::time::sleep(Duration::from_millis(rng.u64(50..150))).await;
                }
                outcomes
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let crash = Instant::now();
    server.stop().await;
    tokio::time::sleep(RESTART).await;
    server.restart().unwrap();
    let back = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    running.store(false, Ordering::Relaxed);
    let mut after = 0;
    let mut failed_after = 0;
    for worker in workers {
        for (started, ok) in worker.await.unwrap() {
            if started >= back {
                after += 1;
                failed_after += usize::from(!ok);
            }
        }
    }
    let while_down: usize = logs
        .iter()
        .map(|log| {
            log.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .filter(|at| **at >= crash && **at < back)
                .count()
        })
        .sum();
    eprintln!(
        "{while_down} connects while down for {RESTART:?} ({FLEET} pools); \
         {failed_after} of {after} requests started after the return failed"
    );
    assert!(after > 0, "no request started after the return");
    assert_eq!(failed_after, 0, "requests started after the return failed");
    // Per pool: the connects that open the circuit and the retries of the requests
    // they failed, then one trial per open period (at least 50 ms, then 100 ms, then
    // 125 ms): at most about a dozen in a second. One connect per request would be
    // about 80 per pool.
    assert!(
        while_down <= FLEET * 20,
        "{while_down} connects while down: the waiting requests dialed"
    );
}
