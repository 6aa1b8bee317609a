//! `get()` futures dropped at any point leak no slot, no permit and no socket, and
//! strand no other waiter. Real connections with a real ping on every checkout, so
//! futures are dropped while waiting, connecting and pinging.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use steadypool::Pool;
use steadypool_tests::eventually;
use steadypool_tests::line_manager::{LineManager, request};
use steadypool_tests::servers::LineServer;
use tokio::task::JoinSet;

const MAX_SIZE: usize = 4;
/// No test here should wait this long; a lost waiter fails instead of hanging.
const WAIT: Duration = Duration::from_secs(20);

fn pool_for(server: &LineServer, max_size: usize) -> Pool<LineManager> {
    Pool::builder(LineManager::new(server.addr()))
        .max_size(max_size)
        .wait_timeout(WAIT)
        // Every checkout pings: one more place for a future to be dropped.
        .check_after(Duration::ZERO)
        .build()
        .unwrap()
}

/// Polls `fut` once; `Some` if it finished.
async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        Poll::Ready(match std::pin::Pin::new(&mut *fut).poll(cx) {
            Poll::Ready(out) => Some(out),
            Poll::Pending => None,
        })
    })
    .await
}

/// Every connection can be checked out at once, and not one more.
async fn all_slots_usable(pool: &Pool<LineManager>, max_size: usize) {
    let mut held = Vec::new();
    for _ in 0..max_size {
        let mut conn = tokio::time::timeout(WAIT, pool.get())
            .await
            .expect("a slot leaked: max_size connections cannot be checked out")
            .unwrap();
        assert_eq!(request(&mut conn, "PING").await.unwrap(), "PONG");
        held.push(conn);
    }
    let extra = tokio::time::timeout(Duration::from_millis(300), pool.get()).await;
    assert!(
        extra.is_err(),
        "more than max_size connections were handed out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_checkouts_dropped_at_random_points_leak_nothing() {
    let seed = fastrand::u64(..);
    eprintln!("seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let server = LineServer::start().await.unwrap();
    let pool = pool_for(&server, MAX_SIZE);

    let stop = Arc::new(AtomicBool::new(false));
    let mut background = JoinSet::new();
    // Users that keep every connection busy, so the dropped futures wait, connect
    // and ping under contention.
    for i in 0..8 {
        let pool = pool.clone();
        let stop = Arc::clone(&stop);
        background.spawn(async move {
            let mut done = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let mut conn = pool.get().await.unwrap();
                assert_eq!(
                    request(&mut conn, &format!("GET user{i}")).await.unwrap(),
                    "NONE"
                );
                done += 1;
            }
            done
        });
    }
    // A watcher: the pool never holds more than max_size connections.
    let watcher = {
        let pool = pool.clone();
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let status = pool.status();
                assert!(status.size <= MAX_SIZE, "{status:?}");
                assert!(status.in_use <= MAX_SIZE, "{status:?}");
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        })
    };

    let completed = Arc::new(AtomicUsize::new(0));
    let mut storm = JoinSet::new();
    let mut aborts = Vec::new();
    for n in 0..1000 {
        let pool = pool.clone();
        let completed = Arc::clone(&completed);
        let after = Duration::from_micros(rng.u64(0..2_000));
        let polls = rng.usize(1..6);
        match n % 3 {
            // Dropped by a timeout at a random moment.
            0 => {
                storm.spawn(async move {
                    if let Ok(got) = tokio::time::timeout(after, pool.get()).await {
                        drop(got.unwrap());
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            // Dropped after a random number of polls.
            1 => {
                storm.spawn(async move {
                    let mut get = pin!(pool.get());
                    for _ in 0..polls {
                        if let Some(got) = poll_once(&mut get).await {
                            drop(got.unwrap());
                            completed.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        tokio::task::yield_now().await;
                    }
                });
            }
            // A whole task aborted from outside.
            _ => {
                let task = storm.spawn(async move {
                    let conn = pool.get().await.unwrap();
                    completed.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                    drop(conn);
                });
                aborts.push((task, after));
            }
        }
        if n % 50 == 49 {
            for (task, after) in aborts.drain(..) {
                tokio::time::sleep(after / 4).await;
                task.abort();
            }
            while storm.join_next().await.is_some() {}
        }
    }
    while let Some(joined) = storm.join_next().await {
        if let Err(e) = joined
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }

    stop.store(true, Ordering::Relaxed);
    let mut served = 0;
    while let Some(done) = background.join_next().await {
        served += done.unwrap();
    }
    watcher.await.unwrap();
    eprintln!(
        "{} of the 1000 completed, background users served {served}",
        completed.load(Ordering::Relaxed)
    );

    let status = pool.status();
    assert!(status.size <= MAX_SIZE, "{status:?}");
    assert_eq!((status.in_use, status.waiting), (0, 0), "{status:?}");
    assert_eq!(status.idle, status.size, "{status:?}");
    all_slots_usable(&pool, MAX_SIZE).await;
    // Connections dropped half-open were closed, not leaked.
    assert!(
        eventually(Duration::from_secs(5), || server.live() <= MAX_SIZE).await,
        "the server still holds {} connections",
        server.live()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_waiters_strand_no_other_waiter() {
    let server = LineServer::start().await.unwrap();
    let pool = pool_for(&server, 2);
    let held = vec![pool.get().await.unwrap(), pool.get().await.unwrap()];

    let mut waiters = Vec::new();
    for _ in 0..20 {
        let pool = pool.clone();
        waiters.push(tokio::spawn(async move {
            let mut conn = pool.get().await.unwrap();
            request(&mut conn, "PING").await.unwrap()
        }));
    }
    assert!(eventually(WAIT, || pool.status().waiting == 20).await);
    // Every other waiter gives up.
    let mut kept = Vec::new();
    for (i, waiter) in waiters.into_iter().enumerate() {
        if i % 2 == 0 {
            waiter.abort();
        } else {
            kept.push(waiter);
        }
    }
    assert!(eventually(WAIT, || pool.status().waiting == 10).await);
    drop(held);
    for waiter in kept {
        assert_eq!(waiter.await.unwrap(), "PONG");
    }
    assert_eq!(server.accepts(), 2);
    all_slots_usable(&pool, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_fifty_six_tasks_on_eight_connections_all_complete() {
    let server = LineServer::start().await.unwrap();
    let pool = pool_for(&server, 8);
    let mut tasks = JoinSet::new();
    for i in 0..256 {
        let pool = pool.clone();
        tasks.spawn(async move {
            let mut conn = pool.get().await.unwrap();
            assert_eq!(
                request(&mut conn, &format!("SET k{i} v{i}")).await.unwrap(),
                "OK"
            );
            assert_eq!(
                request(&mut conn, &format!("GET k{i}")).await.unwrap(),
                format!("VALUE v{i}")
            );
        });
    }
    let mut finished = 0;
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
        finished += 1;
    }
    assert_eq!(finished, 256);
    assert!(
        server.accepts() <= 8,
        "{} connections opened",
        server.accepts()
    );
    let status = pool.status();
    assert_eq!((status.in_use, status.waiting), (0, 0), "{status:?}");
}
