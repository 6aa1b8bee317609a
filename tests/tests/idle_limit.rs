//! The learned idle limit, against a real server that closes connections idle for
//! 2 s (like a Node.js `keepAliveTimeout` or an nginx `keepalive_timeout`), under a
//! workload of request bursts with idle gaps of 1 to 4 s between them.
//!
//! Two pools run side by side against two such servers: one learns the limit (the
//! default), the control does not. Once the learning pool's interval contains 2 s,
//! the next 100 of its requests must meet no reset at all, while the control, under
//! the same workload, meets them throughout. (A burst's connections all go idle
//! together, so they die together: the first lesson costs one burst's worth.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use steadypool::metrics::{EVICTIONS, IDLE_LIMIT_LOWER, IDLE_LIMIT_UPPER, RESETS};
use steadypool::{Classify, Disposition, Pool};
use steadypool_tests::line_manager::{LineManager, request};
use steadypool_tests::servers::LineServer;
use tokio::sync::Barrier;
use tokio::task::JoinSet;

const SERVER_IDLE_LIMIT: Duration = Duration::from_secs(2);
/// Requests per burst, all holding a connection at once: each burst needs this many
/// connections, which then sit idle until the next burst takes them.
const BURST: usize = 16;
/// The pool's coarse clock lags the precise one by up to a kernel tick (4 ms at
/// HZ=250, 10 ms at HZ=100), on each of the two readings an idle time takes.
const COARSE_TICK: Duration = Duration::from_millis(10);

/// The gaps between bursts, 1 to 4 s: each round of four draws one gap from each of
/// four 400 ms bands (starting at 1, 1.75, 2.5 and 3.25 s), in random order. Random,
/// yet every round has a gap well below the server's limit (the first band stays
/// below 75 % of it, short enough to be reused whatever was learned) and gaps well
/// above it, so the test's duration does not hang on luck.
struct Gaps(Vec<Duration>);

impl Gaps {
    fn next(&mut self) -> Duration {
        if self.0.is_empty() {
            self.0 = (0..4)
                .map(|band| Duration::from_millis(1000 + 750 * band + fastrand::u64(0..400)))
                .collect();
            fastrand::shuffle(&mut self.0);
        }
        self.0.pop().unwrap_or(SERVER_IDLE_LIMIT)
    }
}

/// The longest time, in microseconds, from sending a request to returning its
/// connection. The server's idle clock starts when it has written its reply, the
/// pool's when the connection is returned: the pool's clock lags the server's by at
/// most this. On a loaded machine the client task may wait 100 ms and more to be
/// scheduled after the reply arrived, so the lag is measured, not assumed.
#[derive(Default)]
struct Lag(AtomicU64);

impl Lag {
    fn note(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.0.fetch_max(micros, Ordering::SeqCst);
    }

    fn most(&self) -> Duration {
        Duration::from_micros(self.0.load(Ordering::SeqCst))
    }
}

/// The workload: a burst of [`BURST`] concurrent requests, then a gap of nothing,
/// forever. Counts the requests that succeeded.
async fn bursts(pool: Pool<LineManager>, requests: Arc<AtomicU64>, lag: Arc<Lag>) {
    let mut gaps = Gaps(Vec::new());
    loop {
        let everyone_holds_one = Arc::new(Barrier::new(BURST));
        let mut burst = JoinSet::new();
        for _ in 0..BURST {
            burst.spawn(one_request(
                pool.clone(),
                Arc::clone(&everyone_holds_one),
                Arc::clone(&requests),
                Arc::clone(&lag),
            ));
        }
        while burst.join_next().await.is_some() {}
        tokio::time::sleep(gaps.next()).await;
    }
}

/// One request of a burst. A request that meets a broken connection marks it
/// broken, as an application does.
async fn one_request(
    pool: Pool<LineManager>,
    everyone_holds_one: Arc<Barrier>,
    requests: Arc<AtomicU64>,
    lag: Arc<Lag>,
) {
    let conn = pool.get().await;
    everyone_holds_one.wait().await;
    let Ok(mut conn) = conn else { return };
    let sent = Instant::now();
    match request(&mut conn, "GET k").await {
        Ok(_) => {
            requests.fetch_add(1, Ordering::SeqCst);
        }
        Err(err) => {
            if let Disposition::Broken { cause, .. } = err.classify() {
                conn.mark_broken(cause);
            }
        }
    }
    drop(conn);
    lag.note(sent.elapsed());
}

/// One recorded series: its name, its labels and its value.
struct Series {
    name: String,
    labels: Vec<(String, String)>,
    value: DebugValue,
}

/// The values recorded since the last look (a snapshot resets the recorder).
struct Recorded(Vec<Series>);

impl Recorded {
    fn take(snapshotter: &Snapshotter) -> Recorded {
        Recorded(
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .map(|(key, _, _, value)| Series {
                    name: key.key().name().to_owned(),
                    labels: key
                        .key()
                        .labels()
                        .map(|l| (l.key().to_owned(), l.value().to_owned()))
                        .collect(),
                    value,
                })
                .collect(),
        )
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a DebugValue> {
        self.0
            .iter()
            .filter(move |series| {
                series.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| series.labels.iter().any(|(sk, sv)| sk == k && sv == v))
            })
            .map(|series| &series.value)
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.matching(name, labels)
            .map(|value| match value {
                DebugValue::Counter(n) => *n,
                _ => 0,
            })
            .sum()
    }

    fn gauge(&self, name: &str, pool: &str) -> Option<f64> {
        self.matching(name, &[("pool", pool)])
            .find_map(|value| match value {
                DebugValue::Gauge(v) => Some(v.0),
                _ => None,
            })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_learned_interval_contains_the_servers_limit_and_resets_after_idle_stop() {
    let started = Instant::now();
    let learning_server = LineServer::with_idle_timeout(SERVER_IDLE_LIMIT)
        .await
        .unwrap();
    let control_server = LineServer::with_idle_timeout(SERVER_IDLE_LIMIT)
        .await
        .unwrap();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let builder = |name: &str, server: &LineServer| {
        Pool::builder(LineManager::new(server.addr()))
            .name(name)
            .max_size(BURST)
            .reaper_interval(Duration::from_millis(100))
            // No checkout pings: the probe, the reaper and the learned limit alone.
            .check_after(Duration::from_secs(3600))
    };
    let (pool, control) = metrics::with_local_recorder(&recorder, || {
        (
            builder("learning", &learning_server).build().unwrap(),
            builder("control", &control_server)
                .learn_idle_limit(false)
                .build()
                .unwrap(),
        )
    });

    let requests = Arc::new(AtomicU64::new(0));
    let lag = Arc::new(Lag::default());
    let mut clients = JoinSet::new();
    clients.spawn(bursts(
        pool.clone(),
        Arc::clone(&requests),
        Arc::clone(&lag),
    ));
    clients.spawn(bursts(
        control.clone(),
        Arc::new(AtomicU64::new(0)),
        Arc::new(Lag::default()),
    ));

    let learned = steadypool_tests::eventually(Duration::from_secs(20), || {
        let limit = pool.idle_limit();
        limit.lower.is_some() && limit.upper.is_some()
    })
    .await;
    assert!(learned, "nothing learned: {:?}", pool.idle_limit());
    let limit = pool.idle_limit();
    let (Some(lower), Some(upper)) = (limit.lower, limit.upper) else {
        panic!("a bound was forgotten: {limit:?}");
    };
    let learning_took = started.elapsed();
    let before = Recorded::take(&snapshotter);
    let resets_to_learn = before.counter(RESETS, &[("pool", "learning")]);
    let most_lag = lag.most();
    println!(
        "learned {lower:?} < limit <= {upper:?} after {learning_took:?} and {resets_to_learn} resets; evicting after {:?}; the pool's idle clock lagged the server's by up to {most_lag:?}",
        limit.evict_after
    );
    // A connection the pool found healthy after `lower` sat idle at the server even
    // longer: below its limit. One found closed after `upper` had sat idle at the
    // server for at most `upper` plus the lag: at or past its limit.
    assert!(
        lower < SERVER_IDLE_LIMIT + COARSE_TICK,
        "the learned lower bound is past the server's limit: {limit:?}"
    );
    assert!(
        SERVER_IDLE_LIMIT <= upper + most_lag + COARSE_TICK,
        "the learned upper bound is below the server's limit, by more than the \
         {most_lag:?} the pool's idle clock lagged: {limit:?}"
    );
    assert!(
        upper < SERVER_IDLE_LIMIT + Duration::from_secs(1),
        "{limit:?}"
    );
    assert!(resets_to_learn >= 1, "learned without a reset: {limit:?}");
    let evict_after = limit.evict_after.unwrap();
    assert!(evict_after < SERVER_IDLE_LIMIT, "{limit:?}");
    // The interval is exported.
    let gauge_lower = before.gauge(IDLE_LIMIT_LOWER, "learning").unwrap();
    let gauge_upper = before.gauge(IDLE_LIMIT_UPPER, "learning").unwrap();
    assert!(
        gauge_lower > 0.0 && gauge_lower < gauge_upper,
        "{gauge_lower} {gauge_upper}"
    );
    assert!(
        (gauge_upper - SERVER_IDLE_LIMIT.as_secs_f64()).abs() < 1.0,
        "{gauge_upper}"
    );

    let counted_from = requests.load(Ordering::SeqCst);
    let hundred_more = steadypool_tests::eventually(Duration::from_secs(30), || {
        requests.load(Ordering::SeqCst) >= counted_from + 100
    })
    .await;
    clients.abort_all();
    assert!(hundred_more, "the workload stalled");
    let after = Recorded::take(&snapshotter);
    let resets = after.counter(RESETS, &[("pool", "learning")]);
    let control_resets = before.counter(RESETS, &[("pool", "control")])
        + after.counter(RESETS, &[("pool", "control")]);
    let evicted = after.counter(
        EVICTIONS,
        &[("pool", "learning"), ("reason", "idle_expired")],
    );
    println!(
        "next {} requests: {resets} resets, {evicted} idle evictions (control, whole run: {control_resets} resets); total {:?}",
        requests.load(Ordering::SeqCst) - counted_from,
        started.elapsed()
    );
    assert_eq!(resets, 0, "resets after learning: {:?}", pool.idle_limit());
    assert!(evicted > 0, "the learned limit evicted nothing");
    assert!(
        control_resets > 0,
        "the control pool never met a reset: the workload does not exercise the limit"
    );
}
