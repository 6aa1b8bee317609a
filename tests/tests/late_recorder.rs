//! A metrics recorder installed after the pool was built still gets every series:
//! the pool switches its handles on the reaper's next tick. This binary installs a
//! global recorder, so it holds this one test only.

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use steadypool::Pool;
use steadypool::metrics::{CHECKOUT_WAIT, CONNECTS, EVICTIONS, RESETS};
use steadypool_tests::line_manager::LineManager;
use steadypool_tests::servers::LineServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorder_installed_after_build_gets_the_pools_metrics() {
    let server = LineServer::start().await.unwrap();
    let pool = Pool::builder(LineManager::new(server.addr()))
        .name("late")
        .reaper_interval(Duration::from_millis(50))
        .build()
        .unwrap();

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::set_global_recorder(recorder).unwrap();
    // Wait for the switch: the series are registered with the new recorder then.
    let mut registered = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        registered = snapshotter
            .snapshot()
            .into_vec()
            .iter()
            .any(|(key, ..)| key.key().name() == RESETS);
        if registered {
            break;
        }
    }
    assert!(registered, "no steadypool series reached the late recorder");

    drop(pool.get().await.unwrap());
    let mut conn = pool.get().await.unwrap();
    conn.mark_broken(steadypool::ResetCause::PeerReset);
    drop(conn);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let snapshot = snapshotter.snapshot().into_vec();
    let counter = |name: &str, label: (&str, &str)| -> u64 {
        snapshot
            .iter()
            .filter(|(key, ..)| {
                key.key().name() == name
                    && key
                        .key()
                        .labels()
                        .any(|l| l.key() == "pool" && l.value() == "late")
                    && key
                        .key()
                        .labels()
                        .any(|l| l.key() == label.0 && l.value() == label.1)
            })
            .map(|(.., value)| match value {
                DebugValue::Counter(n) => *n,
                _ => 0,
            })
            .sum()
    };
    assert_eq!(counter(CONNECTS, ("outcome", "ok")), 1);
    assert_eq!(counter(RESETS, ("cause", "peer_reset")), 1);
    assert_eq!(counter(EVICTIONS, ("reason", "closed")), 0);
    let waits = snapshot
        .iter()
        .filter(|(key, ..)| key.key().name() == CHECKOUT_WAIT)
        .map(|(.., value)| match value {
            DebugValue::Histogram(values) => values.len(),
            _ => 0,
        })
        .sum::<usize>();
    assert_eq!(waits, 2, "both checkouts reach the histogram");
}
