//! The soak: 10,000 requests, 64 at a time, through the chaos proxy while it injects
//! every production cause at once: a load balancer's idle timeout (connections idle for
//! 250 ms are reset), 1 % of requests or replies reset, and a crash (every open
//! connection reset) every few seconds. Half the requests are idempotent and must all
//! succeed; the others must never run twice, which the upstream's ledger of executions
//! per request id proves. At the end the pool's status must agree with the kernel's
//! list of this process's sockets, and resident memory must stay flat from the second
//! quarter of the requests to the last.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use steadypool::TcpState;
use steadypool::chaos::{self, ChaosProxy, IdleClose};
use steadypool::metrics::RetryOutcome;
use steadypool::{CircuitState, GiveUp, Idempotency, Pool, RetryPolicy, RunError};
use steadypool_tests::flaky::{self, Faults, LedgerManager, LedgerServer};
use steadypool_tests::load::error_chain;
use steadypool_tests::recorded::Books;
use steadypool_tests::{eventually, sockets};
use tokio::sync::watch;

const REQUESTS: u64 = 10_000;
const CONCURRENCY: usize = 64;
const TICK: Duration = Duration::from_millis(200);
/// The load balancer's idle timeout the proxy plays.
const IDLE_CLOSE: Duration = Duration::from_millis(250);
/// Generous room for timing on a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(15);
/// No request finishing for this long means the soak is stuck.
const STALL: Duration = Duration::from_secs(20);
/// The most resident memory may grow from the second quarter to the last.
const GROWTH_LIMIT: u64 = 20 << 20;

/// This process's resident memory in bytes, as the kernel counts it (`VmRSS`).
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/self/status"));
    kib * 1024
}

/// What the requests came to.
#[derive(Debug, Default)]
struct Tally {
    next: AtomicU64,
    done: AtomicU64,
    not_safe: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(what);
    }
}

fn idempotency(id: u64) -> Idempotency {
    if id.is_multiple_of(2) {
        Idempotency::Idempotent
    } else {
        Idempotency::NotIdempotent
    }
}

async fn worker(
    pool: Pool<LedgerManager>,
    tally: Arc<Tally>,
    mut lull: watch::Receiver<bool>,
    seed: u64,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    loop {
        let id = tally.next.fetch_add(1, Ordering::SeqCst);
        if id >= REQUESTS {
            return;
        }
        if lull.wait_for(|quiet| !quiet).await.is_err() {
            return;
        }
        let kind = idempotency(id);
        let result = pool
            .run_with(kind, async move |conn| flaky::run(conn, id).await)
            .await;
        match (kind, result) {
            (_, Ok(1)) => {}
            (Idempotency::Idempotent, Ok(_)) => {}
            (Idempotency::NotIdempotent, Ok(runs)) => {
                tally.fail(format!("request {id} reported {runs} runs"));
            }
            (
                Idempotency::NotIdempotent,
                Err(RunError::MaybeExecuted {
                    reason: GiveUp::NotIdempotent,
                    ..
                }),
            ) => {
                tally.not_safe.fetch_add(1, Ordering::SeqCst);
            }
            (kind, Err(err)) => tally.fail(format!("{kind:?} request {id}: {}", error_chain(&err))),
        }
        tally.done.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(rng.u64(20..120))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_through_idle_closes_resets_and_crashes() {
    let server = LedgerServer::start(Faults::default()).await.unwrap();
    let proxy = Arc::new(
        ChaosProxy::builder(server.addr())
            .seed(10_000)
            .faults(chaos::Faults {
                idle_close: Some(IdleClose::rst(IDLE_CLOSE)),
                reset_probability: 0.01,
                ..chaos::Faults::none()
            })
            .start()
            .await
            .unwrap(),
    );
    let port = proxy.local_addr().port();
    let pool = Pool::builder(LedgerManager::new(proxy.local_addr()))
        .name("soak")
        .max_size(32)
        .reaper_interval(TICK)
        .retry_policy(
            RetryPolicy::default()
                .max_attempts(10)
                .deadline(Duration::from_secs(30))
                .backoff(Duration::from_millis(5), Duration::from_millis(200))
                // A crash resets up to 32 requests at once: room for them even
                // early on, when few requests have filled the budget.
                .budget(0.5, 50),
        )
        .build()
        .unwrap();

    let tally = Arc::new(Tally::default());
    let (lull, quiet) = watch::channel(false);
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|w| {
            tokio::spawn(worker(
                pool.clone(),
                Arc::clone(&tally),
                quiet.clone(),
                w as u64,
            ))
        })
        .collect();

    // Every cycle: requests flow, the upstream crashes, requests flow, then a lull in
    // which every pooled connection sits idle past the load balancer's timeout.
    let chaos_done = Arc::new(tokio::sync::Notify::new());
    let chaos = {
        let proxy = Arc::clone(&proxy);
        let done = Arc::clone(&chaos_done);
        tokio::spawn(async move {
            let cycle = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(1_300)).await;
                    proxy.crash().await;
                    tokio::time::sleep(Duration::from_millis(1_000)).await;
                    lull.send_replace(true);
                    tokio::time::sleep(IDLE_CLOSE * 2 + TICK).await;
                    lull.send_replace(false);
                }
            };
            tokio::select! {
                () = cycle => {}
                () = done.notified() => {}
            }
            lull.send_replace(false);
        })
    };

    // Resident memory, by the quarter of the requests done when it was read.
    let mut peaks = [0u64; 4];
    let started = Instant::now();
    // Stuck means no request finished for a long while, not a slow run: on a machine
    // shared with builds the whole soak may take far longer than usual, yet with 64
    // workers and lulls of under a second, 20 s without a single finished request is
    // a hang, never load.
    let mut progress = (0, Instant::now());
    loop {
        let done = tally.done.load(Ordering::SeqCst);
        let quarter = ((done * 4 / REQUESTS) as usize).min(3);
        peaks[quarter] = peaks[quarter].max(resident_bytes());
        if done >= REQUESTS || workers.iter().all(|w| w.is_finished()) {
            break;
        }
        if done > progress.0 {
            progress = (done, Instant::now());
        }
        assert!(
            progress.1.elapsed() < STALL,
            "the soak is stuck at {done} requests, none finished for {STALL:?}: {:?}",
            pool.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    for w in workers {
        w.await.unwrap();
    }
    chaos_done.notify_one();
    chaos.await.unwrap();

    let stats = proxy.stats();
    let failures = tally
        .failures
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut replayed = 0;
    let mut lost = 0;
    for id in 0..REQUESTS {
        let runs = server.runs(id);
        match idempotency(id) {
            Idempotency::Idempotent if runs == 0 => lost += 1,
            Idempotency::NotIdempotent if runs > 1 => replayed += 1,
            _ => {}
        }
    }
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    eprintln!(
        "soak: {REQUESTS} requests at concurrency {CONCURRENCY} in {took:?}; proxy: {} crashes \
         ({} connections reset), {} idle resets, {} random resets, {} connections; pool: \
         resets {:?}, retried operations {} succeeded / {} gave up / {} budget spent / {} not \
         safe; {} non-idempotent requests failed as not safe to retry, {} failed otherwise; \
         resident memory peaks by quarter (MiB): {:.1} {:.1} {:.1} {:.1}",
        stats.crashes,
        stats.crash_resets,
        stats.idle_rst,
        stats.reset_random,
        stats.accepted,
        pool.stats().reset_table(),
        pool.stats().retries(RetryOutcome::Succeeded),
        pool.stats().retries(RetryOutcome::GaveUp),
        pool.stats().retries(RetryOutcome::BudgetSpent),
        pool.stats().retries(RetryOutcome::NotSafe),
        tally.not_safe.load(Ordering::SeqCst),
        failures.len(),
        mib(peaks[0]),
        mib(peaks[1]),
        mib(peaks[2]),
        mib(peaks[3]),
    );

    assert!(
        failures.is_empty(),
        "{:#?}",
        &failures[..failures.len().min(20)]
    );
    assert_eq!(lost, 0, "idempotent requests that never ran");
    assert_eq!(replayed, 0, "non-idempotent requests that ran twice");
    assert_eq!(tally.done.load(Ordering::SeqCst), REQUESTS);
    assert!(stats.crashes >= 3 && stats.crash_resets > 0, "{stats:?}");
    assert!(stats.idle_rst > 0 && stats.reset_random > 0, "{stats:?}");
    let growth = peaks[3].saturating_sub(peaks[1]);
    assert!(
        growth < GROWTH_LIMIT,
        "resident memory grew {:.1} MiB from the second quarter to the last",
        mib(growth)
    );

    // Quiet now: the pool's account must match the kernel's.
    proxy.clear().unwrap();
    let status = pool.status();
    assert_eq!((status.in_use, status.waiting), (0, 0), "{status:?}");
    assert_eq!(status.circuit, CircuitState::Closed);
    assert!(status.size <= status.max_size, "{status:?}");
    let agree = eventually(TICK + SLACK, || {
        let status = pool.status();
        let open = sockets::count_in_state(port, TcpState::Established).unwrap();
        let lingering = sockets::count_in_state(port, TcpState::CloseWait).unwrap();
        status.size == status.idle && status.size == open && lingering == 0
    })
    .await;
    assert!(
        agree,
        "pool {:?}, kernel {:?}",
        pool.status(),
        sockets::to_port(port).unwrap()
    );
}
