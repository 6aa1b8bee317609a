//! The reconnect storm: 50 pools of 8 busy connections each against one upstream that
//! crashes (every connection reset, connects refused) and comes back two seconds
//! later. The connect gate must spread the pools' connect attempts out (no 100 ms
//! window holds more than a third of them), and every pool must recover.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use steadypool::{Pool, RetryPolicy};
use steadypool_tests::flaky::{self, Faults, LedgerManager, LedgerServer, busiest_window};

const POOLS: usize = 50;
const CONNECTIONS: usize = 8;
const DOWN_FOR: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_pools_reconnect_spread_out_and_all_recover() {
    let server = LedgerServer::start(Faults::default()).await.unwrap();
    let connects: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let running = Arc::new(AtomicBool::new(true));
    let mut pools = Vec::with_capacity(POOLS);
    let mut last_ok: Vec<Arc<Mutex<Option<Instant>>>> = Vec::with_capacity(POOLS);
    let mut workers = Vec::new();
    for p in 0..POOLS {
        let pool = Pool::builder(LedgerManager::with_log(
            server.addr(),
            Arc::clone(&connects),
        ))
        .name(format!("storm-{p}"))
        .max_size(CONNECTIONS)
        .connect_timeout(Duration::from_secs(1))
        .max_concurrent_connects(2)
        .circuit_open_after(3)
        .circuit_open_for(Duration::from_secs(1))
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
                    if result.is_ok() {
                        *ok.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(rng.u64(0..20))).await;
                }
            }));
        }
        pools.push(pool);
        last_ok.push(ok);
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

    let attempts: Vec<Instant> = connects
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .copied()
        .filter(|at| *at >= crash)
        .collect();
    let (busiest, busiest_at) = busiest_window(&attempts, Duration::from_millis(100));
    let during_outage = attempts.iter().filter(|at| **at < back).count();
    eprintln!(
        "{} connect attempts after the crash ({during_outage} while down); busiest 100 ms \
         window: {busiest}, starting {:?} after the crash; every pool recovered \
         {recovered_in:?} after the upstream came back",
        attempts.len(),
        busiest_at.map(|at| at - crash),
    );
    assert!(
        attempts.len() >= POOLS * CONNECTIONS,
        "every connection was reopened: {}",
        attempts.len()
    );
    assert!(
        busiest * 3 <= attempts.len(),
        "{busiest} of {} connect attempts fell in one 100 ms window",
        attempts.len()
    );
}
